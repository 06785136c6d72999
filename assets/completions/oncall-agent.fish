# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_oncall_agent_global_optspecs
    string join \n c/config= h/help V/version
end

function __fish_oncall_agent_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_oncall_agent_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_oncall_agent_using_subcommand
    set -l cmd (__fish_oncall_agent_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -s V -l version -d 'Print version'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -f -a "run" -d 'Run the daemon'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -f -a "send" -d 'Queue one alert with the running daemon; exits 0 once it is durable. If the daemon does not answer (or is full), the alert goes to the spool folder and is picked up later'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -f -a "status" -d 'Show queues, budgets and failures of the running daemon'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -f -a "check-config" -d 'Validate the config file: exit 0, or 78 with the file, the field and the problem'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -f -a "integrations" -d 'List the OnCall integrations the API token sees (needs [api] in the config): id, name, type, how often this agent sends heartbeats to it (from the config\'s `heartbeat`), which local integrations use it, and its inbound URL'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -f -a "dead" -d 'List, show, retry or purge dead letters (alerts OnCall refused for good). Talks to the running daemon over its Unix socket only'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -f -a "retry-now" -d 'End every wait of the running daemon\'s sender at once: retry backoff, a server\'s Retry-After and 429 pauses, of one integration or of all (and the organization\'s pause). Budgets still hold: what goes out still spends them. Talks to the daemon over its Unix socket only'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -f -a "fleet" -d 'List the hosts sharing this agent\'s budgets (needs [fleet]): each host seen in the organization budget\'s last window and the requests it sent in it, asked of the fleet\'s Redis'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -f -a "generate-assets" -d 'Write the man page and shell completions into a folder (for packaging)'
complete -c oncall-agent -n "__fish_oncall_agent_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand run" -l log-format -d 'How log lines look: plain (without timestamps under journald) or json for shippers' -r -f -a "plain\t'Plain lines (without timestamps under journald)'
json\t'One JSON object per line, for log shippers'"
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand run" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -s i -l integration -d 'The integration\'s local name (from the config)' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -s t -l title -d 'Alert title (formatted_webhook `title`)' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -s m -l message -d 'Alert text (`message`)' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -l message-file -d 'Read the alert text from this file, or - for standard input (a command\'s output, such as a unit\'s last journal lines). Bytes that are not UTF-8 are replaced; of a longer text only its last 16 KiB are kept' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -s u -l uid -d 'Grouping id (`alert_uid`): alerts with the same uid form one alert group, and `--state ok` with it resolves the group' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -l state -d '`alerting` or `ok` (any case; also PROBLEM/RECOVERY, and Zabbix\'s 1/0)' -r -f -a "alerting\t'Also `problem` (Nagios/Icinga notification type) and `1` (Zabbix {EVENT.VALUE})'
ok\t'Also `recovery` (Nagios/Icinga), `resolved` and `0` (Zabbix {EVENT.VALUE})'"
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -l link -d 'Link to the source (`link_to_upstream_details`)' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -l image-url -d 'Image URL (`image_url`)' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -l json -d 'Send this JSON object verbatim instead (a file, or - for standard input)' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -l timeout -d 'Give up waiting for the daemon after this long' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand send" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand status" -s n -l interval -d 'With --watch: time between redraws ("1s", "500ms"; at least 100ms)' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand status" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand status" -l json -d 'Print the JSON answer instead of a table'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand status" -s w -l watch -d 'Redraw the table every --interval until Ctrl-C, like `watch`; keeps going (and says "daemon unreachable") while the daemon is away'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand status" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand check-config" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand check-config" -l online -d 'Also check the credentials with OnCall: each integration\'s token (a GET on its inbound URL, which costs no rate-limit budget) and the API token (one API call). Exit 78 if one is refused, 69 if OnCall cannot be reached'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand integrations" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand integrations" -l show-urls -d 'Print inbound URLs in full. They hold the integrations\' tokens; by default they are redacted'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand integrations" -l json -d 'Print JSON instead of a table'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand integrations" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and not __fish_seen_subcommand_from list show retry purge help" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and not __fish_seen_subcommand_from list show retry purge help" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and not __fish_seen_subcommand_from list show retry purge help" -f -a "list" -d 'List dead letters, oldest first'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and not __fish_seen_subcommand_from list show retry purge help" -f -a "show" -d 'Show one dead letter: why OnCall refused it, its answer and the alert itself'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and not __fish_seen_subcommand_from list show retry purge help" -f -a "retry" -d 'Queue dead letters again (fix the cause first: OnCall refused them once)'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and not __fish_seen_subcommand_from list show retry purge help" -f -a "purge" -d 'Delete dead letters for good'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and not __fish_seen_subcommand_from list show retry purge help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from list" -s i -l integration -d 'Only this integration\'s' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from list" -l limit -d 'Show at most this many' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from list" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from list" -l json -d 'Print the JSON answer instead of a table'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from show" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from show" -l json -d 'Print the JSON answer'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from retry" -s i -l integration -d 'With --all: only this integration\'s dead letters' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from retry" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from retry" -l all -d 'Every dead letter (with --integration: every one of that integration)'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from retry" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from purge" -l older-than -d 'Every dead letter that failed at least this long ago ("7d", "12h")' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from purge" -s i -l integration -d 'With --older-than: only this integration\'s dead letters' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from purge" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from purge" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from help" -f -a "list" -d 'List dead letters, oldest first'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show one dead letter: why OnCall refused it, its answer and the alert itself'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from help" -f -a "retry" -d 'Queue dead letters again (fix the cause first: OnCall refused them once)'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from help" -f -a "purge" -d 'Delete dead letters for good'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand dead; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand retry-now" -s i -l integration -d 'Only this integration' -r
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand retry-now" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand retry-now" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand fleet" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand fleet" -l json -d 'Print JSON instead of a table'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand fleet" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand generate-assets" -l out-dir -d 'Folder to write into (created if missing)' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand generate-assets" -s c -l config -d 'The config file' -r -F
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand generate-assets" -s h -l help -d 'Print help'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and not __fish_seen_subcommand_from run send status check-config integrations dead retry-now fleet generate-assets help" -f -a "run" -d 'Run the daemon'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and not __fish_seen_subcommand_from run send status check-config integrations dead retry-now fleet generate-assets help" -f -a "send" -d 'Queue one alert with the running daemon; exits 0 once it is durable. If the daemon does not answer (or is full), the alert goes to the spool folder and is picked up later'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and not __fish_seen_subcommand_from run send status check-config integrations dead retry-now fleet generate-assets help" -f -a "status" -d 'Show queues, budgets and failures of the running daemon'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and not __fish_seen_subcommand_from run send status check-config integrations dead retry-now fleet generate-assets help" -f -a "check-config" -d 'Validate the config file: exit 0, or 78 with the file, the field and the problem'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and not __fish_seen_subcommand_from run send status check-config integrations dead retry-now fleet generate-assets help" -f -a "integrations" -d 'List the OnCall integrations the API token sees (needs [api] in the config): id, name, type, how often this agent sends heartbeats to it (from the config\'s `heartbeat`), which local integrations use it, and its inbound URL'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and not __fish_seen_subcommand_from run send status check-config integrations dead retry-now fleet generate-assets help" -f -a "dead" -d 'List, show, retry or purge dead letters (alerts OnCall refused for good). Talks to the running daemon over its Unix socket only'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and not __fish_seen_subcommand_from run send status check-config integrations dead retry-now fleet generate-assets help" -f -a "retry-now" -d 'End every wait of the running daemon\'s sender at once: retry backoff, a server\'s Retry-After and 429 pauses, of one integration or of all (and the organization\'s pause). Budgets still hold: what goes out still spends them. Talks to the daemon over its Unix socket only'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and not __fish_seen_subcommand_from run send status check-config integrations dead retry-now fleet generate-assets help" -f -a "fleet" -d 'List the hosts sharing this agent\'s budgets (needs [fleet]): each host seen in the organization budget\'s last window and the requests it sent in it, asked of the fleet\'s Redis'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and not __fish_seen_subcommand_from run send status check-config integrations dead retry-now fleet generate-assets help" -f -a "generate-assets" -d 'Write the man page and shell completions into a folder (for packaging)'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and not __fish_seen_subcommand_from run send status check-config integrations dead retry-now fleet generate-assets help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and __fish_seen_subcommand_from dead" -f -a "list" -d 'List dead letters, oldest first'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and __fish_seen_subcommand_from dead" -f -a "show" -d 'Show one dead letter: why OnCall refused it, its answer and the alert itself'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and __fish_seen_subcommand_from dead" -f -a "retry" -d 'Queue dead letters again (fix the cause first: OnCall refused them once)'
complete -c oncall-agent -n "__fish_oncall_agent_using_subcommand help; and __fish_seen_subcommand_from dead" -f -a "purge" -d 'Delete dead letters for good'
