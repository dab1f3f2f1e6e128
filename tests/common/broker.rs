//! A test's own Kafka cluster, for what must not touch the shared one: a broker restart while
//! every other test runs on the stack of `make up`. The same distribution and the same
//! configuration (deploy/local/kafka.sh's `kafka_config`, sourced, so the two never drift), with
//! its own data directories and free ports; the broker is killed and started again at will, and
//! everything is removed with the directory that holds it.
//!
//! Two processes, a controller and a broker (KRaft isolated mode, as production runs it), not the
//! stack's one combined node: a combined node SIGKILLed while a transaction commits restarts
//! with its own stale metadata, acts as transaction coordinator before it has registered again,
//! and when its previous registration is fenced skips the commit markers of the partitions that
//! lost their leader, leaving a hanging transaction (ARCHITECTURE, "Hanging transactions"). The
//! controller here outlives the broker, and [`Broker::run`] restarts a killed broker only once
//! the controller has fenced its previous life (its log says so), so the restarted broker
//! catches up to metadata where it leads nothing until it is registered again. (A helper's
//! repro, 10 commit-time kills per setting: combined mode hung 2 and skipped markers 6 times;
//! isolated with a restart after the fence, 0 and 0. Upstream: KAFKA-20734.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::Reaper;

/// Sources the stack's scripts with this cluster's directory and ports, then runs `$1`. The
/// combined configuration of `kafka_config` is split into a controller (node 1) and a broker
/// (node 2), each with its own data directory. The controller fences a broker that stopped
/// heartbeating after 3 s (9 s by default).
const SCRIPT: &str = r#"
set -euo pipefail
source "$ROOT/deploy/local/lib.sh"
source "$ROOT/deploy/local/kafka.sh"
KAFKA_DIR=$DIR KAFKA_PORT=$PORT KAFKA_CONTROLLER_PORT=$CONTROLLER_PORT
[[ -d $KAFKA_HOME/lib ]] || die "no Kafka at $KAFKA_HOME: run make up once (it installs it)"
run_java() {
  exec java -Xms128m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true     -Dlog4j2.configurationFile="file:$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR/logs-$1"     -cp "$KAFKA_HOME/lib/*" kafka.Kafka "$KAFKA_DIR/$1.properties"
}
case $1 in
  format)
    kafka_config
    grep -v -e '^process.roles=' -e '^node.id=' -e '^listeners=' -e '^advertised.listeners='       -e '^inter.broker.listener.name=' -e '^log.dirs=' "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/common.properties"
    { cat "$KAFKA_DIR/common.properties"
      echo "process.roles=controller"; echo "node.id=1"
      echo "listeners=CONTROLLER://127.0.0.1:$CONTROLLER_PORT"; echo "log.dirs=$KAFKA_DIR/controller-data"
      echo "broker.session.timeout.ms=3000"
    } >"$KAFKA_DIR/controller.properties"
    { cat "$KAFKA_DIR/common.properties"
      echo "process.roles=broker"; echo "node.id=2"
      echo "listeners=PLAINTEXT://127.0.0.1:$PORT"; echo "advertised.listeners=PLAINTEXT://127.0.0.1:$PORT"
      echo "inter.broker.listener.name=PLAINTEXT"; echo "log.dirs=$KAFKA_DIR/data"
      echo "broker.heartbeat.interval.ms=500"
    } >"$KAFKA_DIR/broker.properties"
    for role in controller broker; do
      kafka_java kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$KAFKA_DIR/$role.properties" --ignore-formatted
    done
    ;;
  controller) run_java controller ;;
  broker) run_java broker ;;
esac
"#;

pub struct Broker {
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    controller: Option<Reaper>,
    process: Option<Reaper>,
    /// How many times it was started: each start logs to its own file.
    starts: u32,
    /// Fences of the broker the controller had logged when it was last killed.
    fences_at_kill: usize,
}

impl Broker {
    /// Formats a new KRaft controller and broker under `dir` and starts both; returns once the
    /// broker answers.
    pub async fn start(dir: &Path) -> Broker {
        let port = super::free_port_block(2);
        let mut broker = Broker {
            dir: dir.to_path_buf(),
            port,
            controller_port: port + 1,
            controller: None,
            process: None,
            starts: 0,
            fences_at_kill: 0,
        };
        std::fs::create_dir_all(&broker.dir).expect("broker directory");
        let out = broker.script("format").output().expect("running the broker's storage format");
        assert!(
            out.status.success(),
            "formatting the private broker failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        broker.controller = Some(broker.spawn("controller", "controller.log"));
        broker.run().await;
        broker
    }

    /// `host:port` of its client listener.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL of the broker (the controller stays): no controlled shutdown, logs and
    /// coordinators recovered on the next start.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            self.fences_at_kill = self.fences();
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    /// How many times the controller has logged fencing the broker (node 2).
    fn fences(&self) -> usize {
        let log = std::fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default();
        log.matches("Fencing broker 2 at epoch").count()
    }

    /// Starts the (formatted) broker again and returns once it answers a metadata request. After
    /// a [`Broker::kill`], first waits for the controller to fence the killed broker (its session
    /// is 3 s).
    pub async fn run(&mut self) {
        assert!(self.process.is_none(), "the broker is already running");
        if self.starts > 0 {
            let waiting = Instant::now();
            while self.fences() <= self.fences_at_kill {
                assert!(
                    waiting.elapsed() < Duration::from_secs(60),
                    "the private controller did not fence the killed broker within 60 s (see {})",
                    self.dir.display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.starts += 1;
        self.process = Some(self.spawn("broker", &format!("broker-{}.log", self.starts)));
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

    /// Runs the script's `role` in the background, its output to `log` in the directory.
    fn spawn(&self, role: &str, log: &str) -> Reaper {
        let log = std::fs::File::create(self.dir.join(log)).expect("private Kafka log file");
        let child = self
            .script(role)
            .stdout(log.try_clone().expect("private Kafka log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the private Kafka {role}: {e}"));
        Reaper(child)
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
        if let Some(mut p) = self.controller.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
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
