//! Layering and every way a configuration can be wrong.

use std::collections::HashMap;
use std::path::Path;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn with_file(json: &str) -> (tempfile::TempDir, Overrides) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, json).unwrap();
    (dir, Overrides { config_file: Some(path), ..Default::default() })
}

fn err(o: &Overrides, e: &[(&str, &str)]) -> String {
    Config::load(o, &env(e)).unwrap_err().to_string()
}

#[test]
fn defaults_follow_the_contract() {
    let c = Config::load(&Overrides::default(), &env(&[])).unwrap();
    assert_eq!(c.msg_que, QueueKind::Kafka);
    assert_eq!(c.main_db, StoreKind::Scylla);
    assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
    assert_eq!(c.scylla_nodes, vec!["127.0.0.1:9042"]);
    assert_eq!(c.scylla_keyspace, "nexxus");
    assert_eq!(c.sockets.port, 80);
    assert!(!c.sockets.ssl);
    assert_eq!(c.http_port, Some(9000));
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.shutdown_grace, Duration::from_millis(10_000));
    assert_eq!(c.kafka.topic_prefix, "");
    assert_eq!(c.topic("write"), "write");
}

#[test]
fn all_defaults_to_embedded_parts_and_its_own_ports() {
    let o = Overrides { single_process: true, ..Default::default() };
    let c = Config::load(&o, &env(&[])).unwrap();
    assert_eq!((c.msg_que, c.main_db), (QueueKind::Memory, StoreKind::Sqlite));
    assert_eq!((c.sockets.port, c.http_port), (3000, Some(8080)));
    // A configured broker or CQL node switches -t all to the real services.
    let c = Config::load(&o, &env(&[("TP_KFK_BROKERS", "k:9092"), ("TP_SCYLLA_NODES", "s:9042")])).unwrap();
    assert_eq!((c.msg_que, c.main_db), (QueueKind::Kafka, StoreKind::Scylla));
    let c = Config::load(&o, &env(&[("TP_KFK_HOST", "k")])).unwrap();
    assert_eq!((c.msg_que, c.kafka.brokers.as_str()), (QueueKind::Kafka, "k:9092"));
}

#[test]
fn layers_apply_in_order_file_env_flag() {
    let (_d, mut o) = with_file(
        r#"{"http_port": 9100, "log_level": "debug", "topic_prefix": "f.", "sckt_ssl": "no", "kfk_host": "file-host"}"#,
    );
    let c = Config::load(&o, &env(&[])).unwrap();
    assert_eq!((c.http_port, c.log_level, c.kafka.topic_prefix.as_str()), (Some(9100), LogLevel::Debug, "f."));
    assert_eq!(c.kafka.brokers, "file-host:9092");
    let e = env(&[("TP_HTTP_PORT", "9200"), ("TP_TOPIC_PREFIX", "e.")]);
    let c = Config::load(&o, &e).unwrap();
    assert_eq!((c.http_port, c.log_level, c.kafka.topic_prefix.as_str()), (Some(9200), LogLevel::Debug, "e."));
    o.sets = vec!["http_port=9300".into()];
    let c = Config::load(&o, &e).unwrap();
    assert_eq!(c.http_port, Some(9300));
    assert_eq!(c.loaded_file.as_deref(), o.config_file.as_deref());
}

#[test]
fn brokers_list_wins_over_host_and_port() {
    let c = Config::load(
        &Overrides::default(),
        &env(&[("TP_KFK_HOST", "h"), ("TP_KFK_PORT", "9999"), ("TP_KFK_BROKERS", "a:1,b:2")]),
    )
    .unwrap();
    assert_eq!(c.kafka.brokers, "a:1,b:2");
    let c = Config::load(&Overrides::default(), &env(&[("TP_KFK_HOST", "h"), ("TP_KFK_PORT", "9999")])).unwrap();
    assert_eq!(c.kafka.brokers, "h:9999");
}

#[test]
fn booleans_accept_the_contract_spellings_only() {
    for (text, want) in
        [("true", true), ("TRUE", true), ("1", true), ("Yes", true), ("false", false), ("0", false), ("NO", false)]
    {
        let e = env(&[("TP_SCKT_SSL", text), ("TP_SCKT_KEY_SSL", "k.pem"), ("TP_SCKT_CERT_FILE", "c.pem")]);
        assert_eq!(Config::load(&Overrides::default(), &e).unwrap().sockets.ssl, want, "{text}");
    }
    assert_eq!(
        err(&Overrides::default(), &[("TP_SCKT_SSL", "enabled")]),
        r#"TP_SCKT_SSL: expected true/false/1/0/yes/no, got "enabled""#
    );
    let (_d, o) = with_file(r#"{"sckt_ssl": "maybe"}"#);
    assert!(
        err(&o, &[]).ends_with(r#"config.json key `sckt_ssl`: expected true/false/1/0/yes/no, got "maybe""#),
        "{}",
        err(&o, &[])
    );
}

#[test]
fn tls_port_default_and_missing_key_or_cert() {
    let e = [("TP_SCKT_SSL", "true"), ("TP_SCKT_KEY_SSL", "k.pem"), ("TP_SCKT_CERT_SSL", "c.pem")];
    let c = Config::load(&Overrides::default(), &env(&e)).unwrap();
    assert_eq!(
        (c.sockets.port, c.sockets.cert_file.as_deref()),
        (443, Some(Path::new("c.pem"))),
        "alias TP_SCKT_CERT_SSL"
    );
    assert_eq!(
        err(&Overrides::default(), &[("TP_SCKT_SSL", "1"), ("TP_SCKT_CERT_FILE", "c.pem")]),
        "TP_SCKT_SSL: TLS is on but TP_SCKT_KEY_SSL is not set"
    );
    assert_eq!(
        err(&Overrides::default(), &[("TP_SCKT_SSL", "1"), ("TP_SCKT_KEY_SSL", "k.pem")]),
        "TP_SCKT_SSL: TLS is on but TP_SCKT_CERT_FILE is not set"
    );
}

#[test]
fn every_bad_value_names_its_origin() {
    let d = Overrides::default();
    let cases: &[(&str, &str, &str)] = &[
        ("TP_HTTP_PORT", "70000", r#"TP_HTTP_PORT: expected a port number 0-65535, got "70000""#),
        ("TP_REDIS_PORT", "redis", r#"TP_REDIS_PORT: expected a port number 0-65535, got "redis""#),
        ("TP_SCKT_PORT", "-1", r#"TP_SCKT_PORT: expected a port number 0-65535, got "-1""#),
        ("TP_KFK_PORT", "x", r#"TP_KFK_PORT: expected a port number 0-65535, got "x""#),
        ("TP_MSG_QUE", "amqp", r#"TP_MSG_QUE: expected kafka or memory, got "amqp""#),
        ("TP_MSG_QUE", "memory", "TP_MSG_QUE: memory queue only works with -t all (one process)"),
        ("TP_MAIN_DB", "ElasticSearch", r#"TP_MAIN_DB: expected scylla or sqlite, got "ElasticSearch""#),
        ("TP_LOG_LEVEL", "loud", r#"TP_LOG_LEVEL: expected off, error, warn, info, debug or trace, got "loud""#),
        ("TP_KFK_BROKERS", "nohost", r#"TP_KFK_BROKERS: expected host:port, got "nohost""#),
        ("TP_KFK_BROKERS", "h:0", r#"TP_KFK_BROKERS: expected host:port with a port 1-65535, got "h:0""#),
        ("TP_SCYLLA_NODES", "", "TP_SCYLLA_NODES: expected at least one host:port"),
        (
            "TP_SCYLLA_KEYSPACE",
            "drop table",
            r#"TP_SCYLLA_KEYSPACE: expected a CQL identifier (letter, then letters/digits/_), got "drop table""#,
        ),
        ("TP_SCYLLA_REPLICATION", "0", r#"TP_SCYLLA_REPLICATION: expected N or dc1:N,dc2:N, got "0""#),
        ("TP_REDIS_URL", "http://x", r#"TP_REDIS_URL: expected redis:// or rediss:// URLs, got "http://x""#),
        ("TP_TOPIC_PREFIX", "a b", r#"TP_TOPIC_PREFIX: topic prefix may only contain a-z A-Z 0-9 . _ -, got "a b""#),
        ("TP_KAFKA_OPTS", "security.protocol", r#"TP_KAFKA_OPTS: expected key=value, got "security.protocol""#),
        ("TP_SHUTDOWN_GRACE_MS", "10s", r#"TP_SHUTDOWN_GRACE_MS: expected a non-negative integer, got "10s""#),
        ("TP_BATCH_SIZE", "0", "TP_BATCH_SIZE: must be at least 1"),
    ];
    for (var, value, want) in cases {
        assert_eq!(&err(&d, &[(var, value)]), want, "{var}={value}");
    }
}

#[test]
fn unknown_file_keys_and_bad_files_are_errors() {
    let (_d, o) = with_file(r#"{"http_prot": 1}"#);
    let e = err(&o, &[]);
    assert!(e.ends_with("config.json: unknown config key `http_prot` (see config.example.json)"), "{e}");
    let (_d, o) = with_file(r#"{"http_port": [1]}"#);
    assert!(err(&o, &[]).ends_with("config.json key `http_port`: expected a string for `http_port`, got [1]"));
    let (_d, o) = with_file("{not json");
    assert!(err(&o, &[]).contains("config.json: not valid JSON"));
    let (_d, o) = with_file("[]");
    assert!(err(&o, &[]).ends_with("config.json: the top level must be an object"));
    let missing = Overrides { config_file: Some("/nonexistent/c.json".into()), ..Default::default() };
    assert!(err(&missing, &[]).starts_with("flag -c: cannot read config file /nonexistent/c.json"));
    assert!(err(&Overrides::default(), &[("TP_CONFIG", "/nonexistent/c.json")])
        .starts_with("TP_CONFIG: cannot read config file"));
    let set = Overrides { sets: vec!["nope=1".into()], ..Default::default() };
    assert_eq!(err(&set, &[]), "flag --set: expected KEY=VALUE with a config.json key, got `nope=1`");
    let set = Overrides { sets: vec!["http_port=abc".into()], ..Default::default() };
    assert_eq!(err(&set, &[]), r#"flag --set http_port: expected a port number 0-65535, got "abc""#);
}

#[test]
fn null_in_the_file_means_default_and_http_zero_means_off() {
    let (_d, o) = with_file(r#"{"kfk_host": null, "http_port": 0, "jwt_secret": ""}"#);
    let c = Config::load(&o, &env(&[])).unwrap();
    assert_eq!((c.http_port, c.jwt_secret, c.kafka.brokers.as_str()), (None, None, "127.0.0.1:9092"));
}

#[test]
fn kafka_opts_pass_through_with_escaped_commas_and_redaction() {
    let e = [("TP_KAFKA_OPTS", r"security.protocol=SASL_SSL,sasl.mechanism=PLAIN,sasl.password=a\,b")];
    let c = Config::load(&Overrides::default(), &env(&e)).unwrap();
    assert_eq!(c.kafka.opts.0[2], ("sasl.password".to_string(), "a,b".to_string()));
    assert!(!c.redacted().contains("a,b"), "secrets never reach the log line");
    assert!(c.redacted().contains("sasl.password"));
}

#[test]
fn replication_forms() {
    let o = Origin::Default;
    assert_eq!(Replication::parse("3", &o).unwrap().to_cql(), "{'class': 'SimpleStrategy', 'replication_factor': 3}");
    assert_eq!(
        Replication::parse("dc1:3, dc2:2", &o).unwrap().to_cql(),
        "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
    );
}

#[test]
fn misspelt_variables_are_reported() {
    let e = env(&[
        ("TP_HTTP_PROT", "1"),
        ("TP_HTTP_PORT", "1"),
        ("TP_SCKT_CERT_SSL", "x"),
        ("TP_CONFIG", "c"),
        ("HOME", "/"),
    ]);
    assert_eq!(Config::unknown_env(&e), vec!["TP_HTTP_PROT".to_string()]);
}

#[test]
fn example_file_lists_every_key_with_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let file: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = file.keys().map(String::as_str).collect();
    let expected: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    assert_eq!(names, expected, "config.example.json must list every key, in table order");
    for key in KEYS {
        let want = key.default.map(|d| match key.kind {
            Kind::Bool => serde_json::Value::Bool(d == "true"),
            Kind::Port | Kind::Count | Kind::Millis => serde_json::Value::from(d.parse::<u64>().unwrap()),
            _ => serde_json::Value::from(d),
        });
        assert_eq!(file[key.name], want.unwrap_or(serde_json::Value::Null), "{}", key.name);
    }
    // And it loads as a config file as is.
    Config::load(&Overrides { config_file: Some(path), ..Default::default() }, &env(&[])).unwrap();
}

#[test]
fn readme_documents_every_variable() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for key in KEYS {
        assert!(readme.contains(&format!("`{}`", key.env)), "README lacks {}", key.env);
    }
}

#[test]
fn every_default_parses_and_is_the_value_a_bare_load_gets() {
    for key in super::keys::KEYS {
        let Some(default) = key.default else { continue };
        let origin = Origin::Default;
        let parsed = match key.kind {
            Kind::Bool => parse::boolean(default, &origin).map(drop),
            Kind::Port => parse::port(default, &origin).map(drop),
            Kind::Count | Kind::Millis => parse::count(default, &origin).map(drop),
            Kind::Text | Kind::Secret => Ok(()),
        };
        assert!(parsed.is_ok(), "{}: default {default:?} does not parse", key.name);
    }
    // Written once, in the table: a bare load and the types that exist outside a Config agree.
    let c = Config::load(&Overrides::default(), &env(&[])).unwrap();
    assert_eq!(c.batch_size, 500);
    assert_eq!(c.sockets.frames_per_sec, 20);
    assert_eq!(c.http_limits.header_timeout, Duration::from_secs(10));
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    let d = Limits::default();
    assert_eq!((d.device_subscriptions, d.channel_filters), (c.limits.device_subscriptions, c.limits.channel_filters));
    assert_eq!((d.device_subscriptions, d.channel_filters), (1000, 100));
}

#[test]
fn a_stage_output_names_a_topic_and_needs_kafka() {
    let c = Config::load(&Overrides::default(), &env(&[("TP_WRITE_OUTPUT", "enrich")])).unwrap();
    assert_eq!((c.kafka.outputs.aggregation.as_str(), c.kafka.outputs.write.as_str()), ("write", "enrich"));
    let all = Overrides { single_process: true, ..Default::default() };
    let embedded = err(&all, &[("TP_AGGREGATION_OUTPUT", "check")]);
    assert!(embedded.contains("TP_AGGREGATION_OUTPUT") && embedded.contains("needs Kafka"), "{embedded}");
    let c = Config::load(&all, &env(&[("TP_KFK_BROKERS", "k:9092"), ("TP_WRITE_OUTPUT", "enrich")])).unwrap();
    assert_eq!(c.kafka.outputs.write, "enrich");
    assert!(Config::load(&all, &env(&[])).is_ok(), "the defaults are fine without Kafka");
    for bad in ["", "a b", "x/y"] {
        assert!(err(&Overrides::default(), &[("TP_WRITE_OUTPUT", bad)]).contains("TP_WRITE_OUTPUT"), "{bad:?}");
    }
}
