//! The figures as Markdown tables (for the README) and one chart.

use serde_json::{Value, json};

pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    json!({"cpu": model, "cores": cores, "memory_gib": mem_kib / 1024 / 1024,
        "cluster": "tests/cluster: Kubernetes v1.37.2, kwok nodes for these workers"})
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub fn tables(r: &Value) -> String {
    let mut out = String::new();
    for (key, title) in [("makespan", "makespan"), ("wide", "wide")] {
        let Some(part) = r.get(key).filter(|v| v.is_object()) else {
            continue;
        };
        let w = &part["work"];
        out += &format!(
            "{title}: {} batches x {} at parallelism {}\n\n| | batchguard | Indexed Job | ratio | other processes' CPU |\n|---|---|---|---|---|\n",
            w["batches"],
            w["duration"].as_str().unwrap_or(""),
            w["parallelism"]
        );
        for (i, rep) in part["reps"].as_array().into_iter().flatten().enumerate() {
            let foreign = f(&rep["load_batchguard"]["foreign_cores"])
                .max(f(&rep["load_indexed_job"]["foreign_cores"]));
            out += &format!(
                "| rep {} | {:.1} s | {:.1} s | {:.3}{} | {foreign:.2} cores |\n",
                i + 1,
                f(&rep["batchguard_seconds"]),
                f(&rep["indexed_job_seconds"]),
                f(&rep["ratio"]),
                if rep["counted"] == true {
                    ""
                } else {
                    " (not counted)"
                },
            );
        }
        let ratio = &part["ratio"];
        out += &match ratio.get("refused").and_then(Value::as_str) {
            Some(why) => format!("| **ratio** | | | refused: {why} | |\n\n"),
            None => format!(
                "| **median ratio** | | | **{:.3}** (min {:.3}, max {:.3}, {} reps) | |\n\n",
                f(&ratio["median_ratio"]),
                f(&ratio["min_ratio"]),
                f(&ratio["max_ratio"]),
                ratio["counted"]
            ),
        };
        out += "| per-batch pipeline (median over reps) | batchguard p50 | p95 | Indexed Job p50 | p95 |\n|---|---|---|---|---|\n";
        for (step, name) in [
            (
                "end_to_next_create",
                "a worker ends -> the next batch is created",
            ),
            ("create_to_running", "created -> its pod Running"),
            (
                "end_to_next_running",
                "a worker ends -> the next pod Running (slot idle)",
            ),
        ] {
            let (bg, job) = (
                &part["pipeline"]["batchguard"][step],
                &part["pipeline"]["indexed_job"][step],
            );
            out += &format!(
                "| {name} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |\n",
                f(&bg["p50_ms"]),
                f(&bg["p95_ms"]),
                f(&job["p50_ms"]),
                f(&job["p95_ms"])
            );
        }
        out += "\n| operator requests per batch | |\n|---|---|\n";
        for (k, v) in part["requests_per_batch"]["by_verb"]
            .as_object()
            .into_iter()
            .flatten()
        {
            out += &format!("| {k} | {:.2} |\n", f(v));
        }
        out += &format!(
            "| **writes** | **{:.2}** |\n\n",
            f(&part["requests_per_batch"]["writes"])
        );
    }
    if let Some(many) = r.get("many").filter(|v| v.is_object()) {
        let w = &many["work"];
        out += &format!(
            "{} runs x {} batches x {} at parallelism {} each, submitted together\n\n| | makespan | operator peak RSS | operator CPU | reconcile p99 | Prometheus queries per poll | API requests/s |\n|---|---|---|---|---|---|---|\n",
            w["runs"],
            w["batches"],
            w["duration"].as_str().unwrap_or(""),
            w["parallelism"]
        );
        for (name, v) in many["variants"].as_object().into_iter().flatten() {
            let rates = v["requests_per_second"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, r)| f(r) >= 0.05)
                        .map(|(k, r)| format!("{k} {:.1}", f(r)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let or_dash = |x: f64, unit: &str, digits: usize| {
                if x.is_finite() {
                    format!("{x:.digits$} {unit}")
                } else {
                    "-".into()
                }
            };
            out += &format!(
                "| {name} | {:.1} s | {} | {} | {} | {} | {} |\n",
                f(&v["seconds"]),
                or_dash(f(&v["peak_rss_mib"]), "MiB", 1),
                or_dash(f(&v["cpu_seconds"]), "s", 1),
                or_dash(f(&v["reconcile_p99_seconds"]) * 1e3, "ms", 0),
                or_dash(f(&v["guard_queries_per_poll"]), "", 1),
                if rates.is_empty() { "-".into() } else { rates },
            );
        }
        out += "\n";
    }
    if let Some(rows) = r.get("scale").and_then(Value::as_array) {
        out += "| batches (1 s, parallelism 100) | run time | operator peak RSS | operator CPU | largest status |\n|---|---|---|---|---|\n";
        for row in rows {
            out += &format!(
                "| {} | {:.1} s | {:.1} MiB | {:.2} s | {:.1} KiB |\n",
                row["batches"],
                f(&row["seconds"]),
                f(&row["peak_rss_mib"]),
                f(&row["cpu_seconds"]),
                f(&row["status_bytes"]) / 1024.0
            );
        }
        if let Some(bytes) = r.get("status_bytes_100k_planner").and_then(Value::as_f64) {
            out += &format!(
                "| 100000 (planner, synthetic cluster) | | | | {:.1} KiB |\n",
                bytes / 1024.0
            );
        }
    }
    out
}

pub fn chart(r: &Value, path: &str) {
    use plotters::prelude::*;
    let Ok(font) = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf") else {
        println!("no DejaVuSans font (apt-get install fonts-dejavu-core): chart skipped");
        return;
    };
    let _ = plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    );
    let root = BitMapBackend::new(path, (1500, 450)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let panels = root.split_evenly((1, 3));

    // 1. The ratio of each repetition, both comparisons, against the 1.05 goal.
    // (comparison, colour, [(repetition, ratio, counted)])
    type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64, bool)>);
    let series: Vec<Series> = [("makespan", BLUE), ("wide", GREEN)]
        .into_iter()
        .map(|(key, color)| {
            let points = r[key]["reps"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, rep)| ((i + 1) as f64, f(&rep["ratio"]), rep["counted"] == true))
                .collect();
            (key, color, points)
        })
        .collect();
    let top = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(1.3, f64::max)
        * 1.1;
    let bottom = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.9, f64::min)
        * 0.9;
    let reps = series.iter().map(|s| s.2.len()).max().unwrap_or(1).max(1) as f64;
    let mut c = ChartBuilder::on(&panels[0])
        .caption(
            "batchguard / Indexed Job, per repetition",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.5..reps + 0.5, bottom..top)
        .unwrap();
    c.configure_mesh()
        .x_desc("repetition")
        .y_desc("makespan ratio")
        .draw()
        .unwrap();
    for (key, color, points) in &series {
        c.draw_series(points.iter().map(|&(x, y, counted)| {
            Circle::new(
                (x, y),
                5,
                if counted {
                    color.filled()
                } else {
                    color.stroke_width(2)
                },
            )
        }))
        .unwrap()
        .label(match *key {
            "makespan" => "1,000 x 2 s, p50",
            _ => "1,000 x 1 s, p100",
        })
        .legend(move |(x, y)| Circle::new((x + 5, y), 5, color.filled()));
    }
    c.draw_series(LineSeries::new([(0.5, 1.05), (reps + 0.5, 1.05)], RED))
        .unwrap()
        .label("goal 1.05")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
    c.configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .unwrap();

    // 2. Where a slot's idle time goes (p50, the 2 s comparison).
    let steps = [
        ("end_to_next_create", "end->create"),
        ("create_to_running", "create->Running"),
        ("end_to_next_running", "slot idle"),
    ];
    let bars: Vec<(f64, f64)> = steps
        .iter()
        .map(|(step, _)| {
            (
                f(&r["makespan"]["pipeline"]["batchguard"][*step]["p50_ms"]),
                f(&r["makespan"]["pipeline"]["indexed_job"][*step]["p50_ms"]),
            )
        })
        .collect();
    let top = bars
        .iter()
        .flat_map(|b| [b.0, b.1])
        .filter(|v| v.is_finite())
        .fold(100.0, f64::max)
        * 1.2;
    let mut c = ChartBuilder::on(&panels[1])
        .caption("Per-batch pipeline, p50 (ms)", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..3.0, 0.0..top)
        .unwrap();
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            steps
                .get(*x as usize)
                .map_or(String::new(), |s| s.1.to_string())
        })
        .y_desc("ms")
        .draw()
        .unwrap();
    for (i, (bg, job)) in bars.iter().enumerate() {
        let x = i as f64;
        for (offset, value, color) in [(0.1, *bg, BLUE), (0.5, *job, RED)] {
            if value.is_finite() {
                c.draw_series([Rectangle::new(
                    [(x + offset, 0.0), (x + offset + 0.35, value)],
                    color.filled(),
                )])
                .unwrap();
            }
        }
    }
    for (label, color) in [("batchguard", BLUE), ("Indexed Job", RED)] {
        c.draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], color.filled())])
            .unwrap()
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    c.configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .unwrap();

    // 3. Operator memory as one run grows.
    let points: Vec<(f64, f64)> = r["scale"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (f(&s["batches"]).log10(), f(&s["peak_rss_mib"])))
        .collect();
    let top = points.iter().map(|p| p.1).fold(64.0, f64::max) * 1.2;
    let xmax = points.iter().map(|p| p.0).fold(1.0, f64::max) + 0.3;
    let mut c = ChartBuilder::on(&panels[2])
        .caption("Operator peak RSS (MiB) vs batches", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(1.7..xmax, 0.0..top)
        .unwrap();
    c.configure_mesh()
        .x_desc("log10(batches)")
        .y_desc("MiB")
        .draw()
        .unwrap();
    c.draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))
        .unwrap();
    c.draw_series(points.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))
        .unwrap();
    c.draw_series(LineSeries::new([(1.7, 64.0), (xmax, 64.0)], RED))
        .unwrap()
        .label("goal 64 MiB")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
    c.configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .unwrap();
    root.present().unwrap();
}
