//! The expressions of the dashboard and the alert rules in deploy/, for the observability tests.

use super::*;

// ---------------------------------------------------------------------------------------------
// Expressions from deploy/
// ---------------------------------------------------------------------------------------------

/// Every `targets[].expr` of every panel (rows' nested panels included), with Grafana's interval
/// macros and the dashboard's template variables replaced by concrete values: `(panel title,
/// expression)`.
pub(crate) fn dashboard_expressions() -> Vec<(String, String)> {
    let path = deploy_dir().join("grafana/dashboards/tessera.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));

    let mut substitutions: Vec<(String, String)> = Vec::new();
    for name in ["__rate_interval", "__interval", "__range"] {
        substitutions.push((format!("${{{name}}}"), WINDOW.to_owned()));
        substitutions.push((format!("${name}"), WINDOW.to_owned()));
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().expect("template variables have names");
        if var["type"] == "datasource" {
            continue; // used in `datasource` fields, never in expressions
        }
        let all = var["allValue"].as_str().unwrap_or(".*").to_owned();
        for pattern in [
            format!("${{{name}}}"),
            format!("[[{name}]]"),
            format!("${name}"),
        ] {
            substitutions.push((pattern, all.clone()));
        }
    }

    fn walk(panels: &Value, subs: &[(String, String)], out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let mut expr = expr.to_owned();
                    for (pattern, value) in subs {
                        expr = expr.replace(pattern, value);
                    }
                    assert!(
                        !expr.contains('$'),
                        "panel {title:?}: unknown variable left in {expr:?}"
                    );
                    out.push((title.clone(), expr));
                }
            }
            walk(&panel["panels"], subs, out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &substitutions, &mut out);
    out
}

/// The alert names declared in deploy/prometheus/alerts.yml (`- alert: Name` lines).
pub(crate) fn declared_alerts() -> BTreeSet<String> {
    let path = deploy_dir().join("prometheus/alerts.yml");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- alert:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// Splits `<value> <comparison> <number>` at its top-level comparison and returns `<value>`;
/// comparisons inside parentheses, brackets, label matchers and strings are not top level.
pub(crate) fn strip_comparison(expr: &str) -> Option<&str> {
    let bytes = expr.as_bytes();
    let (mut depth, mut quote, mut escaped) = (0usize, None::<u8>, false);
    let mut last = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' | b'\'' | b'`' => quote = Some(b),
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'=' | b'!' | b'<' | b'>' if depth == 0 => {
                let two = bytes.get(i + 1) == Some(&b'=');
                if matches!(b, b'=' | b'!') && !two {
                    i += 1;
                    continue;
                }
                let len = if two { 2 } else { 1 };
                last = Some((i, i + len));
                i += len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let (start, end) = last?;
    let rhs = expr[end..].trim();
    let rhs = rhs.strip_prefix("bool").map_or(rhs, str::trim_start);
    rhs.parse::<f64>().ok()?;
    Some(expr[..start].trim())
}

#[test]
pub(crate) fn strip_comparison_finds_the_top_level_one() {
    assert_eq!(
        strip_comparison("up{job=\"x\"} == 0"),
        Some("up{job=\"x\"}")
    );
    assert_eq!(
        strip_comparison("(a{o!=\"ok\"} or b * 0) / c > 0.05"),
        Some("(a{o!=\"ok\"} or b * 0) / c")
    );
    assert_eq!(
        strip_comparison("histogram_quantile(0.99, sum by (le) (x{a=~\"<|>\"})) >= bool 1e-1"),
        Some("histogram_quantile(0.99, sum by (le) (x{a=~\"<|>\"}))")
    );
    assert_eq!(strip_comparison("sum(rate(x[5m]))"), None);
    assert_eq!(strip_comparison("a > b"), None);
}
