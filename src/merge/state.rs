//! Answers about the replicas' own state, united so that every replica's part shows.
//!
//! **Alerts** that every replica agrees on. Each replica evaluates the alerting rules itself, and
//! one restarted forgets when an alert became active where Prometheus does not restore it
//! (a rule without `for`, or an outage longer than its tolerance): it shows the alert anew,
//! with a later `activeAt`. The union over the replicas shows each alert (by label set) once,
//! with the earliest `activeAt` any replica knows and `firing` over `pending`.
//!
//! `/api/v1/alerts`: the union of the replicas' alerts, in the primary's order, then those
//! only others have. `/api/v1/rules`: the primary's groups and rules as they are, each
//! alerting rule's `alerts` replaced by the union of that rule's alerts (the same group
//! name, rule name and expression) and its `state` by the union's.
//!
//! **Metadata** (`/api/v1/metadata`, `/api/v1/targets/metadata`): what each replica learnt
//! from its scrapes. A replica restarted, or new, has not scraped every target yet; the union
//! has every metric's entries (each distinct entry once), and `limit` applies to it again.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::MergeError;

pub use crate::api::Agreed;

/// Unites `primary`'s answer with `others'` (bodies as the replicas sent them). An other that
/// is not a successful answer of the same shape is left out. `limit` is the client's (on
/// metadata: the most metrics). Errs only when the primary's is not a successful answer (the
/// caller then sends it as it is).
pub fn unite(kind: Agreed, primary: &[u8], others: &[&[u8]], limit: Option<usize>) -> Result<Vec<u8>, MergeError> {
    let mut answer = parse(primary)?;
    let others: Vec<Value> = others.iter().filter_map(|body| parse(body).ok()).collect();
    match kind {
        Agreed::Metadata => {
            // `{metric: [entry, ...]}`: each metric's distinct entries, the primary's first.
            let mut union: Map<String, Value> = Map::new();
            let mut seen: HashSet<(String, String)> = HashSet::new();
            for data in std::iter::once(&answer).chain(&others).filter_map(|a| a.get("data")?.as_object()) {
                for (metric, entries) in data {
                    let kept = union.entry(metric.clone()).or_insert_with(|| Value::Array(Vec::new()));
                    if let (Some(kept), Some(entries)) = (kept.as_array_mut(), entries.as_array()) {
                        for entry in entries {
                            if seen.insert((metric.clone(), entry.to_string())) {
                                kept.push(entry.clone());
                            }
                        }
                    }
                }
            }
            if let Some(limit) = limit {
                // Prometheus keeps `limit` metrics, whichever; the first in name order here.
                union = union.into_iter().take(limit).collect();
            }
            answer["data"] = Value::Object(union);
        }
        Agreed::TargetsMetadata => {
            // `[{target, metric, type, help, unit}, ...]`: each distinct entry once.
            let mut union: Vec<Value> = Vec::new();
            let mut seen: HashSet<String> = HashSet::new();
            for data in std::iter::once(&answer).chain(&others).filter_map(|a| a.get("data")?.as_array()) {
                for entry in data {
                    // serde_json's maps are sorted by key: equal entries have equal text.
                    if seen.insert(entry.to_string()) {
                        union.push(entry.clone());
                    }
                }
            }
            if let Some(limit) = limit {
                union.truncate(limit);
            }
            answer["data"] = Value::Array(union);
        }
        Agreed::Alerts => {
            let mut union = Union::default();
            for alerts in std::iter::once(&answer).chain(&others).filter_map(|a| a.pointer("/data/alerts")) {
                union.add_all(alerts);
            }
            if let Some(alerts) = answer.pointer_mut("/data/alerts") {
                *alerts = Value::Array(union.into_alerts());
            }
        }
        Agreed::Rules => {
            let mut unions: HashMap<RuleKey, Union> = HashMap::new();
            for groups in std::iter::once(&answer).chain(&others).filter_map(|a| a.pointer("/data/groups")) {
                for_each_alerting_rule(groups, |key, rule| {
                    if let Some(alerts) = rule.get("alerts") {
                        unions.entry(key).or_default().add_all(alerts);
                    }
                });
            }
            if let Some(groups) = answer.pointer_mut("/data/groups") {
                for_each_alerting_rule_mut(groups, |key, rule| {
                    let Some(union) = unions.remove(&key) else { return };
                    let state = union.state();
                    rule.insert("alerts".into(), Value::Array(union.into_alerts()));
                    if let Some(state) = state {
                        rule.insert("state".into(), Value::String(state.into()));
                    }
                });
            }
        }
    }
    serde_json::to_vec(&answer).map_err(|e| MergeError::NotJson(e.to_string()))
}

fn parse(body: &[u8]) -> Result<Value, MergeError> {
    let answer: Value = serde_json::from_slice(body).map_err(|e| MergeError::NotJson(e.to_string()))?;
    if answer.get("status").and_then(Value::as_str) != Some("success") {
        return Err(MergeError::NotSuccess);
    }
    Ok(answer)
}

/// A rule's identity across replicas of one configuration: its group's name, its name and
/// its expression. Not the group's file, whose path is each replica's own (a different mount
/// or data directory).
type RuleKey = (String, String, String);

fn rule_key(group: &Value, rule: &Value) -> Option<RuleKey> {
    let text = |value: &Value, field: &str| value.get(field).and_then(Value::as_str).map(str::to_string);
    Some((text(group, "name")?, text(rule, "name")?, text(rule, "query").unwrap_or_default()))
}

fn for_each_alerting_rule(groups: &Value, mut each: impl FnMut(RuleKey, &Map<String, Value>)) {
    for group in groups.as_array().into_iter().flatten() {
        for rule in group.get("rules").and_then(Value::as_array).into_iter().flatten() {
            if let (Some(key), Some(rule)) = (rule_key(group, rule), rule.as_object())
                && rule.get("type").and_then(Value::as_str) == Some("alerting")
            {
                each(key, rule);
            }
        }
    }
}

fn for_each_alerting_rule_mut(groups: &mut Value, mut each: impl FnMut(RuleKey, &mut Map<String, Value>)) {
    for group in groups.as_array_mut().into_iter().flatten() {
        let keys: Vec<Option<RuleKey>> = group
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|rule| rule_key(group, rule))
            .collect();
        let rules = group.get_mut("rules").and_then(Value::as_array_mut).into_iter().flatten();
        for (rule, key) in rules.zip(keys) {
            if let (Some(key), Some(rule)) = (key, rule.as_object_mut())
                && rule.get("type").and_then(Value::as_str) == Some("alerting")
            {
                each(key, rule);
            }
        }
    }
}

/// Alerts by label set, in the order first seen.
#[derive(Default)]
struct Union {
    alerts: Vec<Value>,
    index: HashMap<String, usize>,
}

impl Union {
    fn add_all(&mut self, alerts: &Value) {
        for alert in alerts.as_array().into_iter().flatten() {
            self.add(alert);
        }
    }

    fn add(&mut self, alert: &Value) {
        // serde_json's maps are sorted by key: the text is the label set's identity.
        let Some(labels) = alert.get("labels").map(Value::to_string) else { return };
        let Some(&at) = self.index.get(&labels) else {
            self.index.insert(labels, self.alerts.len());
            self.alerts.push(alert.clone());
            return;
        };
        let kept = &mut self.alerts[at];
        if rank(alert) > rank(kept) {
            // Firing over pending: the other's state and value, with the earliest start below.
            let active_at = kept.get("activeAt").cloned();
            *kept = alert.clone();
            if let (Some(active_at), Some(kept)) = (active_at, kept.as_object_mut()) {
                kept.insert("activeAt".into(), active_at);
            }
        }
        if let (Some(theirs), Some(ours)) = (active_at(alert), active_at(kept))
            && theirs < ours
            && let Some(kept) = kept.as_object_mut()
        {
            kept.insert("activeAt".into(), alert["activeAt"].clone());
        }
    }

    /// The state of a rule with these alerts: `firing` if any fires, else `pending` if any
    /// is, else none (the rule's own state stands).
    fn state(&self) -> Option<&'static str> {
        match self.alerts.iter().map(rank).max()? {
            2 => Some("firing"),
            1 => Some("pending"),
            _ => None,
        }
    }

    fn into_alerts(self) -> Vec<Value> {
        self.alerts
    }
}

fn rank(alert: &Value) -> u8 {
    match alert.get("state").and_then(Value::as_str) {
        Some("firing") => 2,
        Some("pending") => 1,
        _ => 0,
    }
}

/// An alert's `activeAt` in Unix nanoseconds (Prometheus writes RFC 3339 with nanoseconds).
fn active_at(alert: &Value) -> Option<i64> {
    let text = alert.get("activeAt")?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(text).ok()?.timestamp_nanos_opt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, state: &str, active_at: &str) -> Value {
        serde_json::json!({
            "labels": {"alertname": name, "severity": "page"},
            "annotations": {},
            "state": state,
            "activeAt": active_at,
            "value": "1e+00",
        })
    }

    fn alerts(list: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"status": "success", "data": {"alerts": list}})).unwrap()
    }

    #[test]
    fn an_alert_keeps_its_earliest_start_and_firing_wins_over_pending() {
        let restarted = alerts(vec![
            alert("A", "pending", "2026-12-03T10:05:00.123456789Z"),
            alert("B", "firing", "2026-12-03T10:05:00Z"),
        ]);
        let other = alerts(vec![
            alert("A", "firing", "2026-12-03T09:00:00.5Z"),
            alert("C", "firing", "2026-12-03T09:30:00Z"),
            alert("B", "firing", "2026-12-03T10:06:00Z"),
        ]);
        let united: Value =
            serde_json::from_slice(&unite(Agreed::Alerts, &restarted, &[&other], None).unwrap()).unwrap();
        let got = united["data"]["alerts"].as_array().unwrap();
        let names: Vec<&str> = got.iter().map(|a| a["labels"]["alertname"].as_str().unwrap()).collect();
        assert_eq!(names, ["A", "B", "C"], "the primary's order, then the others' own");
        assert_eq!(got[0]["state"], "firing");
        assert_eq!(got[0]["activeAt"], "2026-12-03T09:00:00.5Z");
        assert_eq!(got[1]["activeAt"], "2026-12-03T10:05:00Z", "the primary's, which is earlier");
    }

    #[test]
    fn a_rules_alerts_are_the_union_of_that_rules_alerts_and_its_state_follows() {
        let rules = |alerts: Vec<Value>, state: &str| {
            // Each replica's rule file at a path of its own.
            let file = format!("/data/{state}/rules.yml");
            serde_json::to_vec(&serde_json::json!({"status": "success", "data": {"groups": [{
                "name": "g", "file": file, "interval": 1,
                "rules": [
                    {"type": "alerting", "name": "A", "query": "vector(1)", "state": state, "alerts": alerts, "health": "ok"},
                    {"type": "recording", "name": "r", "health": "ok"},
                ],
            }]}}))
            .unwrap()
        };
        let primary = rules(vec![], "inactive");
        let other = rules(vec![alert("A", "firing", "2026-12-03T09:00:00Z")], "firing");
        let united: Value = serde_json::from_slice(&unite(Agreed::Rules, &primary, &[&other], None).unwrap()).unwrap();
        let rule = &united["data"]["groups"][0]["rules"][0];
        assert_eq!(rule["state"], "firing");
        assert_eq!(rule["alerts"][0]["activeAt"], "2026-12-03T09:00:00Z");
        assert_eq!(united["data"]["groups"][0]["rules"][1]["name"], "r", "other rules stay as they are");
    }

    #[test]
    fn metadata_is_the_union_of_every_replicas_entries_cut_to_the_limit() {
        let entry = |help: &str| serde_json::json!({"type": "counter", "help": help, "unit": ""});
        let answer = |data: Value| serde_json::to_vec(&serde_json::json!({"status": "success", "data": data})).unwrap();
        let restarted = answer(serde_json::json!({"up": [entry("up")]}));
        let other = answer(serde_json::json!({"up": [entry("up")], "scrape_samples": [entry("s")]}));
        let united: Value =
            serde_json::from_slice(&unite(Agreed::Metadata, &restarted, &[&other], None).unwrap()).unwrap();
        assert_eq!(united["data"], serde_json::json!({"scrape_samples": [entry("s")], "up": [entry("up")]}));
        let cut: Value =
            serde_json::from_slice(&unite(Agreed::Metadata, &restarted, &[&other], Some(1)).unwrap()).unwrap();
        assert_eq!(cut["data"].as_object().unwrap().len(), 1);

        let target = |metric: &str| serde_json::json!({"target": {"job": "node"}, "metric": metric, "type": "gauge", "help": "", "unit": ""});
        let mine = answer(serde_json::json!([target("up")]));
        let theirs = answer(serde_json::json!([target("up"), target("go_goroutines")]));
        let united: Value =
            serde_json::from_slice(&unite(Agreed::TargetsMetadata, &mine, &[&theirs], None).unwrap()).unwrap();
        assert_eq!(united["data"], serde_json::json!([target("up"), target("go_goroutines")]));
    }

    #[test]
    fn an_error_answer_is_not_united_and_a_broken_other_is_left_out() {
        let error = br#"{"status":"error","errorType":"bad_data","error":"x"}"#;
        assert_eq!(unite(Agreed::Alerts, error, &[], None), Err(MergeError::NotSuccess));
        let primary = alerts(vec![alert("A", "firing", "2026-12-03T09:00:00Z")]);
        let united = unite(Agreed::Alerts, &primary, &[b"not json", error], None).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&united).unwrap(),
            serde_json::from_slice::<Value>(&primary).unwrap()
        );
    }
}
