//! Pass-through via `wrk`, and the side-by-side markdown table.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

/// Runs `wrk` against `url` and returns its figures as JSON.
pub(crate) fn wrk(
    label: &str,
    role: &str,
    url: &str,
    duration: u64,
    connections: u32,
    threads: u32,
) -> Result<Value> {
    ensure!(
        url.starts_with("http://127.") || url.starts_with("http://localhost"),
        "wrk only against loopback URLs"
    );
    let out = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{duration}s"))
        .arg("--timeout")
        .arg("5s")
        .arg(url)
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprint!("{text}");
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rps = field_after(&text, "Requests/sec:").unwrap_or(f64::NAN);
    let non2xx = field_after(&text, "Non-2xx or 3xx responses:").unwrap_or(0.0);
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let socket_errors = text
        .lines()
        .find(|l| l.trim_start().starts_with("Socket errors:"))
        .map(|l| l.trim().to_owned());
    // Only successful responses count: a proxy answering 502 fast is not fast.
    let ok_rps = if requests > 0.0 {
        rps * (requests - non2xx) / requests
    } else {
        rps
    };
    Ok(json!({
        "scenario": "wrk",
        "label": label,
        "role": role,
        "url": url,
        "duration_s": duration,
        "connections": connections,
        "threads": threads,
        "requests": requests,
        "non_2xx": non2xx,
        "socket_errors": socket_errors,
        "rps": rps,
        "ok_rps": (ok_rps * 10.0).round() / 10.0,
    }))
}

fn field_after(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
    line.trim_start()[key.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Results of one proxy: the last JSON line of each scenario (wrk keyed by role).
fn load(path: &Path) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return out;
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(s) = v["scenario"].as_str() else {
            continue;
        };
        let key = match v["role"].as_str() {
            Some(role) => format!("{s}:{role}"),
            None => s.to_owned(),
        };
        out.insert(key, v);
    }
    out
}

fn num(r: &HashMap<String, Value>, scenario: &str, field: &str) -> Option<f64> {
    r.get(scenario)?.get(field)?.as_f64()
}

fn fmt(x: Option<f64>, unit: &str) -> String {
    match x {
        None => "n/a".to_owned(),
        Some(v) if v.is_nan() => "n/a".to_owned(),
        Some(v) => {
            let s = if v.abs() >= 1000.0 {
                group(v.round() as i64)
            } else if v.abs() >= 100.0 || v.fract() == 0.0 {
                format!("{v:.0}")
            } else if v.abs() >= 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            };
            format!("{s}{unit}")
        }
    }
}

fn group(v: i64) -> String {
    let s = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && matches!((s.len() - i) % 3, 0) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn ratio(g: Option<f64>, p: Option<f64>) -> String {
    match (g, p) {
        (Some(g), Some(p)) if p != 0.0 && g.is_finite() && p.is_finite() => {
            format!("{}x", fmt(Some(g / p), ""))
        }
        _ => "—".to_owned(),
    }
}

/// The markdown table: figure | gripd | Pushpin | ratio (gripd / Pushpin) | target.
pub(crate) fn table(gripd: &Path, pushpin: &Path) -> String {
    let g = load(gripd);
    let p = load(pushpin);
    let size = |scenario: &str, field: &str| {
        num(&p, scenario, field)
            .or_else(|| num(&g, scenario, field))
            .map(|v| group(v as i64))
            .unwrap_or_else(|| "?".to_owned())
    };
    let mut rows: Vec<[String; 5]> = Vec::new();
    let hold_n = size("hold", "n");
    let hold = format!("hold {hold_n} idle SSE connections:");
    let f = format!(
        "fan-out {} subscribers, {} messages at {}/s:",
        size("fanout", "n"),
        size("fanout", "k"),
        size("fanout", "rate")
    );
    let t = format!(
        "{} channels × {} subscribers, publish flat out {} s:",
        size("throughput", "channels"),
        size("throughput", "subs"),
        size("throughput", "duration_s")
    );
    // (figure prefix, figure, scenario, field, unit, target)
    let figures: [(&str, &str, &str, &str, &str, &str); 16] = [
        (
            &hold,
            "process-tree RSS per held connection",
            "hold",
            "rss_per_conn_kb",
            " KB",
            "≤ 4 KB",
        ),
        (&hold, "connections held", "hold", "held", "", "all"),
        (
            &hold,
            "new held connections per second",
            "hold",
            "conn_per_s",
            "",
            "≥ 10,000",
        ),
        (&f, "lost deliveries", "fanout", "lost", "", "0"),
        (
            &f,
            "subscriber streams ended by the proxy",
            "fanout",
            "subscriber_errors",
            "",
            "0",
        ),
        (
            &f,
            "publish→receive p50",
            "fanout",
            "latency_ms_p50",
            " ms",
            "",
        ),
        (
            &f,
            "publish→receive p99",
            "fanout",
            "latency_ms_p99",
            " ms",
            "≤ 100 ms",
        ),
        (
            &f,
            "publish→receive max",
            "fanout",
            "latency_ms_max",
            " ms",
            "",
        ),
        (
            &f,
            "time until the last subscriber has a message, median message",
            "fanout",
            "last_subscriber_ms_p50",
            " ms",
            "",
        ),
        (
            &f,
            "time until the last subscriber has a message, worst message",
            "fanout",
            "last_subscriber_ms_max",
            " ms",
            "",
        ),
        (
            &f,
            "proxy CPU per delivery",
            "fanout",
            "cpu_us_per_delivery",
            " µs",
            "≤ 10 µs",
        ),
        (
            &t,
            "deliveries/s",
            "throughput",
            "deliveries_per_s",
            "",
            "≥ 100,000",
        ),
        (&t, "lost deliveries", "throughput", "lost", "", "0"),
        (
            &t,
            "subscriber streams ended by the proxy",
            "throughput",
            "subscriber_errors",
            "",
            "0",
        ),
        (
            &t,
            "proxy CPU per delivery",
            "throughput",
            "cpu_us_per_delivery",
            " µs",
            "",
        ),
        (
            "pass-through:",
            "plain GET through the proxy (wrk, 2xx req/s)",
            "wrk:proxy",
            "ok_rps",
            "",
            "",
        ),
    ];
    for (prefix, figure, scenario, field, unit, target) in figures {
        let (gv, pv) = (num(&g, scenario, field), num(&p, scenario, field));
        rows.push([
            format!("{prefix} {figure}"),
            fmt(gv, unit),
            fmt(pv, unit),
            ratio(gv, pv),
            target.to_owned(),
        ]);
    }
    // The same origin serves both columns: no ratio.
    let direct = |r: &HashMap<String, Value>| num(r, "wrk:direct", "ok_rps");
    rows.push([
        "pass-through: plain GET direct to the origin (wrk, req/s)".into(),
        fmt(direct(&g), ""),
        fmt(direct(&p), ""),
        "—".into(),
        String::new(),
    ]);
    // 2xx req/s of a wrk role as a fraction of direct-to-origin.
    let vs_direct = |r: &HashMap<String, Value>, role: &str| {
        let via = num(r, &format!("wrk:{role}"), "ok_rps")?;
        let direct = num(r, "wrk:direct", "ok_rps")?;
        (direct > 0.0).then(|| via / direct)
    };
    let (gv, pv) = (vs_direct(&g, "proxy"), vs_direct(&p, "proxy"));
    rows.push([
        "pass-through: through the proxy vs direct".into(),
        fmt(gv, "x"),
        fmt(pv, "x"),
        ratio(gv, pv),
        "≥ 0.5x".into(),
    ]);
    // What no proxy can beat here: a relay that only frames messages (relay.rs).
    rows.push([
        "pass-through: bare byte relay vs direct (the ceiling on this machine)".into(),
        fmt(vs_direct(&g, "ceiling"), "x"),
        fmt(vs_direct(&p, "ceiling"), "x"),
        "—".into(),
        String::new(),
    ]);

    // Mature C proxies in front of the same origin, for reference (scripts/bench).
    for (role, what) in [
        ("nginx", "nginx (proxy_pass, upstream keep-alive)"),
        ("haproxy", "HAProxy (http-reuse always)"),
    ] {
        rows.push([
            format!("pass-through: {what} vs direct, for reference"),
            fmt(vs_direct(&g, role), "x"),
            fmt(vs_direct(&p, role), "x"),
            "—".into(),
            String::new(),
        ]);
    }

    let mut out = String::from(
        "| figure | gripd | Pushpin | ratio (gripd / Pushpin) | target |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r[0], r[1], r[2], r[3], r[4]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(fmt(Some(45.27), " KB"), "45.3 KB");
        assert_eq!(fmt(Some(0.013), "x"), "0.01x");
        assert_eq!(fmt(None, ""), "n/a");
        assert_eq!(ratio(Some(2.0), Some(4.0)), "0.50x");
    }

    #[test]
    fn parses_wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/plain\n  1 threads and 10 connections\n  1000 requests in 1.00s, 100.00KB read\n  Non-2xx or 3xx responses: 10\nRequests/sec:   1000.50\n";
        assert_eq!(field_after(text, "Requests/sec:"), Some(1000.5));
        assert_eq!(field_after(text, "Non-2xx or 3xx responses:"), Some(10.0));
    }
}
