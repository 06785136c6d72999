#!/bin/bash
# Runs inside the systemd box: WORKERS loops (half on the Unix socket, half on TCP) each opening
# a new connection per alert, until the file STOP exists or MAX_SECONDS pass. Each request
# appends "<curl exit> <http code> <worker>" to OUT.<worker>; curl exit 7 is a refused
# connection, 52/56 a reset one.
set -u
out=$1 stop=$2 workers=${3:-4} max_seconds=${4:-120}
end=$((SECONDS + max_seconds))
for w in $(seq 1 "$workers"); do
    (
        if [ $((w % 2)) -eq 0 ]; then
            via=(--unix-socket /run/oncall-agent/agent.sock) base=http://agent
        else
            via=() base=http://127.0.0.1:9753
        fi
        n=0
        while [ ! -e "$stop" ] && [ "$SECONDS" -lt "$end" ]; do
            n=$((n + 1))
            code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 "${via[@]}" \
                -H 'Content-Type: application/json' \
                --data "{\"title\":\"load-$w-$n\",\"alert_uid\":\"load-$w\"}" \
                "$base/v1/integrations/db-prod/alerts" 2>/dev/null)
            echo "$? $code $w" >>"$out.$w"
        done
    ) &
done
wait
