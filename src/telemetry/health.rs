//! Readiness as a set of named conditions. `/readyz` is 200 only when every condition holds and
//! lists the failing ones otherwise, so an operator sees *why* a pod is out of rotation.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Shared by the HTTP endpoint and every worker of a process.
#[derive(Debug, Default)]
pub struct Health {
    /// condition name -> `None` when fine, `Some(reason)` when not.
    conditions: Mutex<BTreeMap<String, Option<String>>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a condition that starts unmet, e.g. "kafka:aggregation" until the broker answers.
    pub fn require(&self, name: &str, reason: &str) {
        self.set(name, Some(reason.to_string()));
    }

    pub fn ok(&self, name: &str) {
        self.set(name, None);
    }

    pub fn fail(&self, name: &str, reason: impl Into<String>) {
        self.set(name, Some(reason.into()));
    }

    /// Forgets a condition (a worker that finished cleanly no longer holds readiness back).
    pub fn remove(&self, name: &str) {
        if let Ok(mut map) = self.conditions.lock() {
            map.remove(name);
        }
    }

    fn set(&self, name: &str, state: Option<String>) {
        if let Ok(mut map) = self.conditions.lock() {
            map.insert(name.to_string(), state);
        }
    }

    /// Ready when at least one condition is registered and none fails.
    pub fn is_ready(&self) -> bool {
        self.failing().is_empty() && self.conditions.lock().map(|m| !m.is_empty()).unwrap_or(false)
    }

    /// The unmet conditions with their reasons.
    pub fn failing(&self) -> Vec<(String, String)> {
        match self.conditions.lock() {
            Ok(map) => map.iter().filter_map(|(k, v)| v.as_ref().map(|r| (k.clone(), r.clone()))).collect(),
            Err(_) => vec![("health".into(), "state poisoned".into())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_all_conditions_hold() {
        let h = Health::new();
        assert!(!h.is_ready(), "nothing registered yet");
        h.require("kafka", "connecting");
        h.require("assigned", "waiting for partitions");
        assert!(!h.is_ready());
        h.ok("kafka");
        assert_eq!(h.failing(), vec![("assigned".to_string(), "waiting for partitions".to_string())]);
        h.ok("assigned");
        assert!(h.is_ready());
        h.fail("kafka", "all brokers down");
        assert!(!h.is_ready());
        h.remove("kafka");
        assert!(h.is_ready());
    }
}
