//! How `tandem ctl` shows the admin API's answers to a person: aligned tables for status
//! and the pair's group, `key: value` lines for the rest. `--json` prints the answer
//! itself, for scripts.

use serde_json::Value;

/// A table with a header row, printed with columns aligned.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// A JSON scalar as a person reads it (`-` for null).
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(_) => v.to_string(),
    }
}

/// The human form of `body`, the answer to `command` (`status`, `cluster`, …).
pub fn human(command: &str, body: &Value) -> String {
    match command {
        "status" if body.get("listeners").is_some() => status(body),
        "cluster" if body.get("members").is_some() => group(body),
        _ => {
            let mut out = String::new();
            lines(&mut out, body, 0);
            out
        }
    }
}

/// `key: value` lines, nested objects indented, arrays of objects as items.
fn lines(out: &mut String, v: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x {
                    Value::Object(o) if !o.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        lines(out, x, depth + 1);
                    }
                    Value::Array(a) if a.iter().any(Value::is_object) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        for item in a {
                            out.push_str(&format!("{pad}  -\n"));
                            lines(out, item, depth + 2);
                        }
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", cell(x))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", cell(other))),
    }
}

fn status(s: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "tandem {}: {}, phase {}, up {} s, {} workers, {} connections\n",
        cell(&s["version"]),
        if s["ready"].as_bool() == Some(true) {
            "ready"
        } else {
            "NOT ready"
        },
        cell(&s["phase"]),
        cell(&s["uptime_seconds"]),
        cell(&s["workers"]),
        cell(&s["connections"]),
    ));
    out.push_str(&format!(
        "config: {} (generation {}, hash {})\n",
        cell(&s["config"]["source"]),
        cell(&s["config"]["generation"]),
        cell(&s["config"]["hash"]),
    ));
    let mut t = Table::new(&["LISTENER", "ADDRESS", "ACTIVE", "ACCEPTED", "REQUESTS"]);
    for l in s["listeners"].as_array().into_iter().flatten() {
        t.row(vec![
            cell(&l["name"]),
            cell(&l["listen"]),
            cell(&l["connections_active"]),
            cell(&l["connections_accepted"]),
            cell(&l["requests"]),
        ]);
    }
    out.push('\n');
    t.render(&mut out);
    let mut t = Table::new(&["ROUTE", "CLUSTERS", "2XX", "3XX", "4XX", "5XX"]);
    for r in s["routes"].as_array().into_iter().flatten() {
        let clusters: Vec<String> = r["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{} ({})", cell(&c["cluster"]), cell(&c["weight"])))
            .collect();
        t.row(vec![
            cell(&r["name"]),
            clusters.join(", "),
            cell(&r["responses"]["2xx"]),
            cell(&r["responses"]["3xx"]),
            cell(&r["responses"]["4xx"]),
            cell(&r["responses"]["5xx"]),
        ]);
    }
    out.push('\n');
    t.render(&mut out);
    let mut t = Table::new(&[
        "CLUSTER",
        "ENDPOINT",
        "STATE",
        "WEIGHT",
        "ACTIVE",
        "EWMA MS",
        "2XX",
        "5XX",
        "EJECTIONS",
    ]);
    for c in s["clusters"].as_array().into_iter().flatten() {
        for e in c["endpoints"].as_array().into_iter().flatten() {
            t.row(vec![
                cell(&c["name"]),
                cell(&e["address"]),
                cell(&e["state"]),
                cell(&e["weight"]),
                cell(&e["active_requests"]),
                cell(&e["ewma_latency_ms"]),
                cell(&e["responses"]["2xx"]),
                cell(&e["responses"]["5xx"]),
                cell(&e["times_ejected"]),
            ]);
        }
    }
    out.push('\n');
    t.render(&mut out);
    if let Some(vips) = s["vips"].as_array().filter(|v| !v.is_empty()) {
        let mut t = Table::new(&["VIP", "VRID", "ADDRESSES", "INTERFACE", "STATE", "PRIORITY NOW/SET"]);
        for v in vips {
            t.row(vec![
                cell(&v["name"]),
                cell(&v["vrid"]),
                cell(&v["addresses"]),
                cell(&v["interface"]),
                cell(&v["state"]),
                format!("{}/{}", cell(&v["priority_now"]), cell(&v["priority"])),
            ]);
        }
        out.push('\n');
        t.render(&mut out);
    }
    if let Some(groups) = s["anycast"]["groups"].as_array().filter(|g| !g.is_empty()) {
        let mut t = Table::new(&[
            "ANYCAST",
            "ADDRESSES",
            "INTERFACE",
            "ANNOUNCED",
            "WHY NOT",
            "WITHDRAWALS",
        ]);
        for g in groups {
            t.row(vec![
                cell(&g["name"]),
                cell(&g["addresses"]),
                cell(&g["interface"]),
                if g["announced"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
                cell(&g["reason"]),
                cell(&g["withdrawals"]),
            ]);
        }
        out.push('\n');
        t.render(&mut out);
    }
    if s["ha"].is_object() {
        out.push('\n');
        out.push_str(&group(&s["ha"]));
    }
    out
}

fn group(g: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "pair: node {} is {}, leader {}, term {}, quorum {}\n",
        cell(&g["id"]),
        cell(&g["role"]),
        cell(&g["leader"]),
        cell(&g["term"]),
        cell(&g["quorum"]),
    ));
    let mut t = Table::new(&["MEMBER", "ADDRESS", "ROLE", "MATCHED", "LAG", "LAST CONTACT S"]);
    for m in g["members"].as_array().into_iter().flatten() {
        let role = if m["witness"].as_bool() == Some(true) {
            "witness"
        } else if m["voter"].as_bool() == Some(true) {
            "voter"
        } else {
            "learner"
        };
        t.row(vec![
            cell(&m["id"]),
            cell(&m["address"]),
            role.into(),
            cell(&m["matched"]),
            cell(&m["lag"]),
            cell(&m["last_contact_seconds"]),
        ]);
    }
    t.render(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn status_is_tables_with_labelled_counts() {
        let s = json!({
            "version": "0.1.0", "ready": true, "phase": "serving", "uptime_seconds": 4,
            "workers": 2, "connections": 0,
            "config": {"source": "t.toml", "generation": 1, "hash": "ab"},
            "listeners": [{"name": "web", "listen": "127.0.0.1:8080", "connections_active": 0,
                           "connections_accepted": 3, "requests": 7}],
            "routes": [{"name": "all", "clusters": [{"cluster": "demo", "weight": 1}],
                        "responses": {"1xx": 0, "2xx": 6, "3xx": 0, "4xx": 1, "5xx": 0}}],
            "clusters": [{"name": "demo", "endpoints": [{"address": "127.0.0.1:9101", "state": "healthy",
                "weight": 1, "active_requests": 0, "ewma_latency_ms": 0.5, "times_ejected": 0,
                "responses": {"1xx": 0, "2xx": 6, "3xx": 0, "4xx": 1, "5xx": 0}}]}],
            "vips": [], "ha": null
        });
        let out = super::human("status", &s);
        assert!(out.contains("phase serving"), "{out}");
        assert!(
            out.lines().any(|l| l.starts_with("ROUTE") && l.contains("2XX")),
            "{out}"
        );
        let route = out.lines().find(|l| l.starts_with("all ")).unwrap();
        assert_eq!(
            route.split_whitespace().collect::<Vec<_>>(),
            ["all", "demo", "(1)", "6", "0", "1", "0"]
        );
        assert!(out.contains("127.0.0.1:9101  healthy"), "{out}");
    }

    #[test]
    fn other_answers_are_key_value_lines() {
        let out = super::human(
            "maintenance",
            &json!({"maintenance": true, "phase": "handover", "vips": []}),
        );
        assert_eq!(out, "maintenance: yes\nphase: handover\nvips: \n");
    }
}
