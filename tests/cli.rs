//! The binary's command line and exit statuses (CONTRACT section 1).

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs the binary to completion; one that is still running after 60 s is killed and fails the
/// test (a command expected to exit must not hang the suite).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = Command::new(common::BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("nexxus-worker {args:?} did not exit within 60 s");
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn usage_errors_exit_64_with_one_line_naming_the_culprit() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["-t", "nope", "-i", "0"], &[], "'--type <TYPE>'"),
        (&["-t", "write", "-i", "-1"], &[], "'--index <INDEX>'"),
        (&["-t", "write", "-i", "x"], &[], "'--index <INDEX>'"),
        (&[], &[], "missing -t <type>"),
        (&["-t", "write", "-i", "0", "topics", "apply"], &[], "cannot be combined"),
        (&["-t", "write", "-i", "0"], &[("TP_SCKT_SSL", "maybe")], "TP_SCKT_SSL: expected true/false/1/0/yes/no"),
        (&["-t", "write", "-i", "0"], &[("TP_HTTP_PORT", "99999")], "TP_HTTP_PORT: expected a port number"),
        (&["-t", "write", "-i", "0", "--set", "bogus=1"], &[], "flag --set"),
        (
            &["-t", "write", "-i", "0", "-c", "/nonexistent.json"],
            &[],
            "flag -c: cannot read config file /nonexistent.json",
        ),
    ];
    for (args, env, needle) in cases {
        let out = run(args, env);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn unknown_config_file_key_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, r#"{"sckt_port": 3000, "kafak_brokers": "x:1"}"#).unwrap();
    let out = run(&["-t", "write", "-i", "0", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("unknown config key `kafak_brokers`"), "{}", stderr(&out));
}

#[test]
fn single_process_settings_are_checked_before_anything_runs() {
    let out = run(&["-t", "write", "-i", "0"], &[("TP_MSG_QUE", "memory")]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("TP_MSG_QUE") && stderr(&out).contains("only works with -t all"), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let not_a_db = dir.path().join("junk.db");
    std::fs::write(&not_a_db, "this is not a SQLite file, and it is long enough to have a header").unwrap();
    let out = run(
        &["-t", "all", "-i", "0"],
        &[("TP_SQLITE_PATH", not_a_db.to_str().unwrap()), ("TP_HTTP_PORT", "0"), ("TP_SCKT_PORT", "0")],
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("TP_SQLITE_PATH") && stderr(&out).contains("junk.db"), "{}", stderr(&out));
    let out = run(&["app", "put", "/nonexistent/app.json"], &[]);
    assert_eq!(out.status.code(), Some(69));
    assert!(stderr(&out).contains("reading /nonexistent/app.json"), "{}", stderr(&out));
}

#[test]
fn help_lists_types_subcommands_and_every_variable() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for t in [
        "aggregation",
        "write",
        "transport_manager",
        "track",
        "android_transport",
        "ios_transport",
        "sockets_transport",
        "all",
    ] {
        assert!(text.contains(t), "{t}");
    }
    for s in ["topics apply", "app put", "publish", "dead-letter replay", "token"] {
        assert!(text.contains(s), "{s}");
    }
    for key in nexxus_worker::config::KEYS {
        assert!(text.contains(key.env), "--help lacks {}", key.env);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_produces_keyed_lines_and_rejects_bad_input() {
    let prefix = common::unique_prefix("publish");
    let cfg = common::config(&prefix);
    common::create_topics(&cfg, &[("aggregation", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"op":"create","object":{"id":"o1","type":"task","application_id":"a"},"application_id":"a","timestamp":1}"#, "\n",
            r#"{"op":"update","patches":[{"op":"increment","path":"task/o1/votes","value":1}],"application_id":"a","timestamp":2}"#, "\n",
        ),
    )
    .unwrap();
    let env = common::env_for(&prefix);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = run(&["publish", path.to_str().unwrap()], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = common::read_all(&cfg, &cfg.topic("aggregation"), 1);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(k, _)| k.as_deref() == Some(b"o1".as_slice())), "keyed by object id");

    std::fs::write(&path, "{\"op\":\"create\"}\nnot json\n").unwrap();
    let out = run(&["publish", path.to_str().unwrap()], &env);
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).contains("line 2: not JSON"), "{}", stderr(&out));
    let got = common::read_all(&cfg, &cfg.topic("aggregation"), 1);
    assert_eq!(got.len(), 2, "nothing of a bad input is produced");
}

/// A signal while a dependency is still unreachable at start is a stop, not a failure: exit 0
/// within the grace period (it exited 70 "worker stopped").
#[test]
fn sigterm_while_waiting_for_a_dependency_exits_0() {
    let closed = common::free_port();
    let url = format!("redis://127.0.0.1:{closed}");
    let child = Command::new(common::BIN)
        .args(["-t", "track", "-i", "0"])
        .env_clear()
        .env("TP_REDIS_URL", &url)
        .env("TP_KFK_BROKERS", format!("127.0.0.1:{}", common::free_port()))
        .env("TP_HTTP_PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}
