//! Prometheus text for the gateway's and the vault proxy's `/metrics`: `prometheus-client`
//! writes OpenMetrics, which `promtool check metrics` (and other 0.0.4 parsers) read as
//! untyped, help-less families.

/// OpenMetrics text (as `prometheus-client` writes it) → Prometheus text 0.0.4: counter
/// descriptors take their samples' `_total` name; `# UNIT` and `# EOF` go.
pub fn openmetrics_to_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    // Counter families whose descriptor lines need the `_total` name.
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((kind, rest)) = descriptor {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(kind);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_descriptors_take_the_total_name_and_unit_and_eof_go() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\n# UNIT a_requests requests\n\
                    a_requests_total 3\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
             a_requests_total 3\n# TYPE b gauge\nb 1\n"
        );
    }
}
