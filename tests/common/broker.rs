//! A test's own Kafka broker, for what must not touch the shared one: a broker restart while
//! every other test runs on the stack of `make up`. The same distribution and the same
//! configuration (deploy/local/kafka.sh's `kafka_config`, sourced, so the two never drift), with
//! its own data directory and free ports; killed and started again at will, removed with the
//! directory that holds it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::Reaper;

/// Sources the stack's scripts with this broker's directory and ports, then runs `$1`.
const SCRIPT: &str = r#"
set -euo pipefail
source "$ROOT/deploy/local/lib.sh"
source "$ROOT/deploy/local/kafka.sh"
KAFKA_DIR=$DIR KAFKA_PORT=$PORT KAFKA_CONTROLLER_PORT=$CONTROLLER_PORT
[[ -d $KAFKA_HOME/lib ]] || die "no Kafka at $KAFKA_HOME: run make up once (it installs it)"
case $1 in
  format)
    kafka_config
    kafka_java kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$KAFKA_DIR/server.properties" --ignore-formatted
    ;;
  run)
    exec java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="file:$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
      -cp "$KAFKA_HOME/lib/*" kafka.Kafka "$KAFKA_DIR/server.properties"
    ;;
esac
"#;

pub struct Broker {
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    process: Option<Reaper>,
    /// How many times it was started: each start logs to its own file.
    starts: u32,
}

impl Broker {
    /// Formats a new single-node KRaft broker under `dir` and starts it; returns once it answers.
    pub async fn start(dir: &Path) -> Broker {
        let port = super::free_port_block(2);
        let mut broker = Broker { dir: dir.to_path_buf(), port, controller_port: port + 1, process: None, starts: 0 };
        std::fs::create_dir_all(&broker.dir).expect("broker directory");
        let out = broker.script("format").output().expect("running the broker's storage format");
        assert!(
            out.status.success(),
            "formatting the private broker failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        broker.run().await;
        broker
    }

    /// `host:port` of its client listener.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no controlled shutdown, logs and coordinators recovered on the next start.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    /// Starts the (formatted) broker again and returns once it answers a metadata request.
    pub async fn run(&mut self) {
        assert!(self.process.is_none(), "the broker is already running");
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("broker-{}.log", self.starts))).expect("broker log");
        let child = self
            .script("run")
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .expect("starting the private broker");
        self.process = Some(Reaper(child));
        let started = Instant::now();
        let address = self.address();
        let answers = tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &address).create().expect("client");
            while started.elapsed() < Duration::from_secs(120) {
                if client.fetch_metadata(None, Duration::from_secs(2)).is_ok_and(|m| m.brokers().len() == 1) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        });
        assert!(
            answers.await.expect("metadata poll"),
            "the private broker did not answer within 120 s (see {})",
            self.dir.display()
        );
        eprintln!("[crash] private broker on {} up after {:.1} s", self.address(), started.elapsed().as_secs_f64());
    }

    fn script(&self, action: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.args(["-c", SCRIPT, "broker", action])
            .env("ROOT", env!("CARGO_MANIFEST_DIR"))
            .env("DIR", &self.dir)
            .env("PORT", self.port.to_string())
            .env("CONTROLLER_PORT", self.controller_port.to_string())
            .env("CLUSTER_ID", cluster_id())
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Kafka cluster id: 16 random bytes in URL-safe base64 whose text does not start with `-`
/// (what `kafka-storage random-uuid` prints), without a JVM start to make it.
fn cluster_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let mut bytes = (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    bytes[0] %= 100; // below 104: the first character is a letter
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
