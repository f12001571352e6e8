//! Measurements, the printed tables and the SVG chart.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{
    client::WorkerResult,
    redis::{SCRIPT_BODY_COMMANDS, SCRIPT_READS},
    Error, Scenario, System,
};

/// One system under one scenario.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Measurement {
    /// The system.
    pub system: System,
    /// The scenario.
    pub scenario: Scenario,
    /// Which repetition (0-based) of the run this is.
    pub round: usize,
    /// Successful requests in the measured window.
    pub requests: u64,
    /// Failed requests (non-200 answers and transport errors), warm-up included.
    pub errors: u64,
    /// The first failure's description.
    pub first_error: Option<String>,
    /// Successful requests per second in the measured window.
    pub rps: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// CPU time of the server runtime's threads per request, in µs (`None` without `/proc`).
    /// Unlike req/s, it barely moves when the machine is busy with something else.
    pub server_cpu_us: Option<f64>,
    /// Redis's CPU time per request, in µs.
    pub redis_cpu_us: f64,
    /// Commands sent to Redis per request (a script counts once): the round trips.
    pub round_trips_per_request: f64,
    /// Every command Redis executed per request, those inside scripts included.
    pub commands_per_request: f64,
    /// Calls per request of each command (by `INFO commandstats` name).
    pub breakdown: BTreeMap<String, f64>,
}

/// CPU time spent during one measured window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cpu {
    /// By the server runtime's threads (`None` where `/proc` is not readable).
    pub(crate) server: Option<Duration>,
    /// By redis-server.
    pub(crate) redis: Duration,
}

impl Measurement {
    pub(crate) fn new(
        system: System,
        scenario: Scenario,
        window: Duration,
        result: &WorkerResult,
        commands: BTreeMap<String, u64>,
        cpu: Cpu,
    ) -> Self {
        let served = (result.ok + result.window_errors).max(1) as f64;
        let total: u64 = commands.values().sum();
        let scripts: u64 = ["evalsha", "eval"]
            .iter()
            .filter_map(|c| commands.get(*c))
            .sum();
        let inside: u64 = if scripts > 0 {
            let (ttl, read) = SCRIPT_READS;
            let reads_inside = commands
                .get(read)
                .copied()
                .unwrap_or(0)
                .min(commands.get(ttl).copied().unwrap_or(0));
            SCRIPT_BODY_COMMANDS
                .iter()
                .filter_map(|c| commands.get(*c))
                .sum::<u64>()
                + reads_inside
        } else {
            0
        };
        let us = |q: f64| Duration::from_micros(result.latency_us.value_at_quantile(q));
        Measurement {
            system,
            scenario,
            round: 0,
            requests: result.ok,
            errors: result.errors,
            first_error: result.first_error.clone(),
            rps: result.ok as f64 / window.as_secs_f64(),
            p50: us(0.50),
            p99: us(0.99),
            server_cpu_us: cpu.server.map(|c| c.as_secs_f64() * 1e6 / served),
            redis_cpu_us: cpu.redis.as_secs_f64() * 1e6 / served,
            round_trips_per_request: (total - inside) as f64 / served,
            commands_per_request: total as f64 / served,
            breakdown: commands
                .into_iter()
                .map(|(name, calls)| (name, calls as f64 / served))
                .collect(),
        }
    }

    /// The breakdown as `name n.nn` pairs, largest first.
    pub fn breakdown_text(&self) -> String {
        let mut items: Vec<_> = self.breakdown.iter().collect();
        items.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        items
            .iter()
            .filter(|(_, v)| **v >= 0.005)
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// All measurements of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// In run order (round by round, scenario by scenario, system by system).
    pub measurements: Vec<Measurement>,
    /// The run's settings and machine, in words.
    pub setting: String,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

impl Report {
    pub(crate) fn new(measurements: Vec<Measurement>, setting: String) -> Self {
        Report {
            measurements,
            setting,
        }
    }

    /// The measurement of `system` under `scenario`: with several rounds, the one with the median
    /// req/s (the lower middle one for an even count).
    pub fn get(&self, system: System, scenario: Scenario) -> Option<&Measurement> {
        let mut all = self.rounds_of(system, scenario);
        all.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        all.get(all.len().saturating_sub(1) / 2).copied()
    }

    /// Every round's measurement of `system` under `scenario`, in run order.
    pub fn rounds_of(&self, system: System, scenario: Scenario) -> Vec<&Measurement> {
        self.measurements
            .iter()
            .filter(|m| m.system == system && m.scenario == scenario)
            .collect()
    }

    /// `num`'s req/s over `den`'s under `scenario`: the median over rounds of each round's ratio.
    /// The two systems run back to back within a round, so a slow spell of the machine that spans
    /// a round moves both and cancels out, which the ratio of the two medians does not do.
    pub fn ratio(&self, num: System, den: System, scenario: Scenario) -> Option<f64> {
        let dens = self.rounds_of(den, scenario);
        let mut ratios: Vec<f64> = self
            .rounds_of(num, scenario)
            .into_iter()
            .filter_map(|a| {
                let b = dens.iter().find(|b| b.round == a.round)?;
                (b.rps > 0.0).then(|| a.rps / b.rps)
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len().checked_sub(1)? / 2).copied()
    }

    /// Total failed requests.
    pub fn errors(&self) -> u64 {
        self.measurements.iter().map(|m| m.errors).sum()
    }

    fn scenarios(&self) -> Vec<Scenario> {
        Scenario::ALL
            .into_iter()
            .filter(|s| self.measurements.iter().any(|m| m.scenario == *s))
            .collect()
    }

    fn systems(&self) -> Vec<System> {
        System::ALL
            .into_iter()
            .filter(|s| self.measurements.iter().any(|m| m.system == *s))
            .collect()
    }

    /// The results table, scenario by scenario (medians over rounds, with their req/s range).
    pub fn table(&self) -> String {
        let rounds = self
            .measurements
            .iter()
            .map(|m| m.round + 1)
            .max()
            .unwrap_or(1);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8} {:<15} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8} {:>9} {:>7}  redis calls per request",
            "scenario",
            "system",
            "req/s",
            "p50",
            "p99",
            "srv µs",
            "rds µs",
            "rt/req",
            "cmds/req",
            "errors"
        );
        for scenario in self.scenarios() {
            for system in self.systems() {
                let Some(m) = self.get(system, scenario) else {
                    continue;
                };
                let errors: u64 = self
                    .rounds_of(system, scenario)
                    .iter()
                    .map(|m| m.errors)
                    .sum();
                let _ = writeln!(
                    out,
                    "{:<8} {:<15} {:>9.0} {:>9} {:>9} {:>7} {:>7.1} {:>8.2} {:>9.2} {:>7}  {}",
                    scenario.name(),
                    system.name(),
                    m.rps,
                    ms(m.p50),
                    ms(m.p99),
                    m.server_cpu_us
                        .map_or_else(|| "-".to_owned(), |us| format!("{us:.1}")),
                    m.redis_cpu_us,
                    m.round_trips_per_request,
                    m.commands_per_request,
                    errors,
                    m.breakdown_text()
                );
                if rounds > 1 {
                    let all: Vec<String> = self
                        .rounds_of(system, scenario)
                        .iter()
                        .map(|m| format!("{:.0}", m.rps))
                        .collect();
                    let _ = writeln!(out, "{:<24} rounds: {}", "", all.join(" "));
                }
            }
        }
        if rounds > 1 {
            let _ = writeln!(
                out,
                "{rounds} rounds: each row is the round with the median req/s; errors are summed"
            );
        }
        out.push_str(
            "srv µs, rds µs: CPU time per request of the server threads and of redis-server\n",
        );
        out.push_str(
            "rt/req: commands sent to Redis per request (a script counts once); cmds/req: \
             commands Redis executed, those inside scripts included\n",
        );
        for m in self.measurements.iter().filter(|m| m.first_error.is_some()) {
            let _ = writeln!(
                out,
                "first error of {} {}: {}",
                m.system,
                m.scenario,
                m.first_error.as_deref().unwrap_or_default()
            );
        }
        out
    }

    /// Each Tessera configuration's req/s over each baseline's, per scenario (empty if no
    /// Tessera configuration or no baseline ran).
    pub fn ratios_table(&self) -> String {
        let systems = self.systems();
        let ours: Vec<System> = systems.iter().copied().filter(|s| s.is_tessera()).collect();
        let baselines: Vec<System> = systems
            .iter()
            .copied()
            .filter(|s| !s.is_tessera())
            .collect();
        if baselines.is_empty() || ours.is_empty() {
            return String::new();
        }
        let mut out = format!("{:<8}", "scenario");
        for o in &ours {
            for b in &baselines {
                let _ = write!(out, " {:>28}", format!("{o}/{b}"));
            }
        }
        out.push('\n');
        for scenario in self.scenarios() {
            let _ = write!(out, "{:<8}", scenario.name());
            for o in &ours {
                for b in &baselines {
                    let cell = self
                        .ratio(*o, *b, scenario)
                        .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
                    let _ = write!(out, " {cell:>28}");
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes a grouped bar chart of req/s (one group per scenario, one bar per system).
    pub fn write_svg(&self, path: &Path) -> Result<(), Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|err| Error::new(format!("cannot create {}: {err}", dir.display())))?;
        }
        self.draw(path)
            .map_err(|err| Error::new(format!("cannot write {}: {err}", path.display())))
    }

    fn draw(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        const COLORS: [RGBColor; 5] = [
            RGBColor(0x2b, 0x6c, 0xb0),
            RGBColor(0x1b, 0x9e, 0x77),
            RGBColor(0x9a, 0x9a, 0x9a),
            RGBColor(0xe0, 0x8a, 0x1e),
            RGBColor(0x55, 0x55, 0x55),
        ];
        let scenarios = self.scenarios();
        let systems = self.systems();
        let max = self
            .measurements
            .iter()
            .map(|m| m.rps)
            .fold(1.0f64, f64::max);
        let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Tessera load benchmark: requests per second",
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..scenarios.len() as f64, 0f64..max * 1.25)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(0)
            .disable_x_axis()
            .y_desc("req/s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        let group = 0.8;
        let width = group / systems.len().max(1) as f64;
        for (si, system) in systems.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            let bars: Vec<_> = scenarios
                .iter()
                .enumerate()
                .filter_map(|(gi, scenario)| {
                    let m = self.get(*system, *scenario)?;
                    let x0 = gi as f64 + (1.0 - group) / 2.0 + si as f64 * width;
                    Some((x0, m.rps))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|&(x0, rps)| {
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.92, rps)], color.filled())
                }))?
                .label(system.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            chart.draw_series(bars.iter().map(|&(x0, rps)| {
                Text::new(
                    format!("{rps:.0}"),
                    (x0 + width * 0.1, rps + max * 0.05),
                    ("sans-serif", 13),
                )
            }))?;
        }
        // Scenario names under each group, in the x label area.
        let label = ("sans-serif", 16)
            .into_font()
            .style(FontStyle::Bold)
            .into_text_style(&root)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (gi, s) in scenarios.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
            root.draw(&Text::new(s.name().to_owned(), (x, y + 8), label.clone()))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        let note = self
            .setting
            .split(',')
            .take(2)
            .collect::<Vec<_>>()
            .join(",");
        root.draw(&Text::new(
            note,
            (90, 520),
            ("sans-serif", 12).into_font().color(&BLACK.mix(0.6)),
        ))?;
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(system: System, round: usize, rps: f64) -> Measurement {
        Measurement {
            system,
            scenario: Scenario::Read,
            round,
            requests: rps as u64,
            errors: 0,
            first_error: None,
            rps,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(2),
            server_cpu_us: Some(20.0),
            redis_cpu_us: 5.0,
            round_trips_per_request: 1.0,
            commands_per_request: 1.0,
            breakdown: BTreeMap::new(),
        }
    }

    #[test]
    fn ratios_pair_systems_within_each_round() {
        // Round 1 is a slow spell for both systems; per-round ratios are 0.9, 0.9, 1.0.
        let report = Report::new(
            vec![
                m(System::Tessera, 0, 90.0),
                m(System::TowerSessions, 0, 100.0),
                m(System::Tessera, 1, 45.0),
                m(System::TowerSessions, 1, 50.0),
                m(System::Tessera, 2, 100.0),
                m(System::TowerSessions, 2, 100.0),
            ],
            String::new(),
        );
        let r = report
            .ratio(System::Tessera, System::TowerSessions, Scenario::Read)
            .unwrap();
        assert!((r - 0.9).abs() < 1e-9, "{r}");
        assert_eq!(
            report.ratio(System::Tessera, System::Rawget, Scenario::Read),
            None
        );
        assert_eq!(
            report.get(System::Tessera, Scenario::Read).unwrap().rps,
            90.0
        );
    }
}
