//! A real `redis-server` for a test: its own free loopback port, a temp dir, no persistence
//! (`--save ''`, no AOF), stopped on drop. Restartable on the same port, as a crashed or
//! rebooted Redis comes back (with its scripts and data forgotten).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// More arguments (`--requirepass x`).
    args: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// With more arguments for redis-server.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = RedisServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian: apt-get install redis-server)");
        self.child = Some(child);
        assert!(
            self.wait_for(true, Duration::from_secs(10)),
            "redis-server did not answer PING on port {}",
            self.port
        );
    }

    /// Stops the server (SIGKILL: no goodbye, as a crash or a lost network).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(self.wait_for(false, Duration::from_secs(10)));
    }

    /// Starts it again on the same port: empty, without its scripts.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        // With a password set, the answer is NOAUTH: the server is up all the same.
        let mut buf = [0u8; 7];
        matches!(s.read_exact(&mut buf), Ok(())) && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
    }

    fn wait_for(&self, up: bool, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if self.pings() == up {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
