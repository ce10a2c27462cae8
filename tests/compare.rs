//! `compare` end to end on a small synthetic data set: the files it writes are checked against
//! numbers recomputed independently (from results.csv and from each run's own metrics.jsonl),
//! the SVG against a tag-balance scan, and every argument error before any training.

mod data_common;
use data_common::{opts_in as opts, TempDir};
use hmdn_cpu::cli::CompareArgs;
use hmdn_cpu::compare::{self, GainOutcome, Variant};
use hmdn_cpu::config::ModelKind;
use hmdn_cpu::data;
use hmdn_cpu::train::RunConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A 6k / 2k synthetic split and its schema in `dir`.
fn synth(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let (train, val, schema) = (
        dir.path("train.csv"),
        dir.path("val.csv"),
        dir.path("schema.toml"),
    );
    data::synth::generate_split(6000, 2000, 11, &train, &val).unwrap();
    std::fs::write(&schema, data::synth_schema().to_toml()).unwrap();
    (train, val, schema)
}

fn args(dir: &TempDir, models: &[&str], seeds: usize) -> CompareArgs {
    let (train, val, schema) = synth(dir);
    CompareArgs {
        train,
        val,
        schema,
        models: models.iter().map(|m| m.to_string()).collect(),
        seeds,
        out: dir.path("out"),
        sweep: None,
        config: None,
        epochs: Some(2),
        batch_size: Some(256),
        threads: None,
    }
}

/// A CSV as header + rows of named fields.
fn read_csv(p: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(p).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), header.len(), "{l}");
            header
                .iter()
                .zip(f)
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn num(row: &BTreeMap<String, String>, k: &str) -> f64 {
    row[k]
        .parse()
        .unwrap_or_else(|_| panic!("{k} = `{}`", row[k]))
}

/// Sample mean and std computed here, independently of the library.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    (m, v.sqrt())
}

/// Checks that every tag is closed in order (XML well-formedness at the tag level), that text
/// has no raw `<`/`>`/bare `&`, and that the root is `<svg>`. Returns the element names.
fn check_xml(svg: &str) -> Vec<String> {
    assert!(svg.starts_with("<?xml"), "no XML declaration");
    let mut stack: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut rest = svg;
    let mut roots = 0;
    while let Some(i) = rest.find('<') {
        let text = &rest[..i];
        assert!(!text.contains('>'), "raw > in text: {text}");
        for (j, _) in text.match_indices('&') {
            let ent = &text[j..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;"]
                    .iter()
                    .any(|e| ent.starts_with(e)),
                "bare & in text: {text}"
            );
        }
        let close = rest[i..].find('>').expect("unclosed <") + i;
        let tag = &rest[i + 1..close];
        assert!(!tag.contains('<'), "< inside tag: {tag}");
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
        if let Some(pi) = tag.strip_prefix('?') {
            assert!(pi.ends_with('?'));
        } else if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else {
            let name = tag
                .trim_end_matches('/')
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            if stack.is_empty() {
                roots += 1;
                assert_eq!(name, "svg");
            }
            names.push(name.clone());
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert_eq!(roots, 1);
    assert!(rest.trim().is_empty());
    names
}

/// Attribute `name` of every element with `class="<class>"`, in document order.
fn attr_of_class(svg: &str, class: &str, name: &str) -> Vec<f64> {
    let marker = format!("class=\"{class}\"");
    svg.split('<')
        .filter(|t| t.contains(&marker))
        .map(|t| {
            let key = format!(" {name}=\"");
            let s = t.find(&key).unwrap() + key.len();
            let e = t[s..].find('"').unwrap() + s;
            t[s..e].parse().unwrap()
        })
        .collect()
}

/// The best epoch's validation line of a run's metrics.jsonl (the highest first-task AUC).
fn best_epoch_line(dir: &Path) -> (serde_json::Value, usize) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let auc = |v: &serde_json::Value| v["val"]["tasks"][0]["auc"].as_f64().unwrap();
    let best = lines
        .iter()
        .cloned()
        .reduce(|a, b| if auc(&b) > auc(&a) { b } else { a })
        .unwrap();
    (best, lines.len())
}

#[test]
fn table_files_and_partition_gain() {
    let dir = TempDir::new("compare-table");
    // hmdn-mmoe is listed first: without dnn it is the RelaImpr base, though mmoe comes first
    // in the paper's order.
    let a = args(&dir, &["hmdn-mmoe", "mmoe"], 2);
    let cmp = compare::compare(&a, &opts(&dir)).unwrap();
    let out = &a.out;

    // results.csv: one row per run, each matching the run's own metrics.jsonl.
    let text = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(text.starts_with("model,variant,seed,auc,logloss,best_epoch,epochs,seconds\n"));
    let rows = read_csv(&out.join("results.csv"));
    assert_eq!(rows.len(), 4);
    let mut seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r["model"].clone(), r["seed"].clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("hmdn-mmoe", "1"),
            ("hmdn-mmoe", "2"),
            ("mmoe", "1"),
            ("mmoe", "2")
        ]
        .map(|(m, s)| (m.to_string(), s.to_string()))
    );
    for r in &rows {
        assert_eq!(r["variant"], "");
        let run_dir = out.join(&r["model"]).join(format!("seed-{}", r["seed"]));
        assert!(run_dir.join("weights.safetensors").exists());
        let (best, epochs) = best_epoch_line(&run_dir);
        assert_eq!(
            num(r, "auc"),
            best["val"]["tasks"][0]["auc"].as_f64().unwrap()
        );
        assert_eq!(
            num(r, "logloss"),
            best["val"]["tasks"][0]["logloss"].as_f64().unwrap()
        );
        assert_eq!(num(r, "best_epoch"), best["epoch"].as_f64().unwrap());
        assert_eq!(num(r, "epochs") as usize, epochs);
        assert!(epochs <= 2);
        assert!(num(r, "auc") > 0.55 && num(r, "auc") < 1.0, "{r:?}");
        assert!(num(r, "seconds") > 0.0);
        let cfg = RunConfig::load(&run_dir.join("config.toml")).unwrap();
        assert_eq!(cfg.train.seed.to_string(), r["seed"]);
        assert_eq!(cfg.model.model.name(), r["model"]);
    }

    // summary.csv: paper order, mean / sample std / RelaImpr recomputed from results.csv.
    let summary = read_csv(&out.join("summary.csv"));
    let order: Vec<&str> = summary.iter().map(|r| r["model"].as_str()).collect();
    assert_eq!(order, ["mmoe", "hmdn-mmoe"]);
    let aucs = |m: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r["model"] == m)
            .map(|r| num(r, "auc"))
            .collect()
    };
    let (base_mean, _) = mean_std(&aucs("hmdn-mmoe"));
    let report = cmp.report();
    for s in &summary {
        let (m, sd) = mean_std(&aucs(&s["model"]));
        assert!((num(s, "auc_mean") - m).abs() < 1e-12);
        assert!((num(s, "auc_std") - sd).abs() < 1e-12);
        let ri = ((m - 0.5) / (base_mean - 0.5) - 1.0) * 100.0;
        assert!((num(s, "relaimpr_pct") - ri).abs() < 1e-9);
        assert_eq!(s["relaimpr_base"], "hmdn-mmoe");
        assert_eq!(s["runs"], "2");
        // The printed table carries the same numbers.
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", s["model"])))
            .unwrap();
        assert!(line.contains(&format!("{m:.4} ± {sd:.4}")), "{line}");
        assert!(line.contains(&format!("{ri:+.2}%")), "{line}");
    }
    assert!(report.contains("dnn is not among the models"), "{report}");
    assert!(report.contains("relative to hmdn-mmoe"), "{report}");
    let pos = |s: &str| report.find(s).unwrap();
    assert!(
        pos("  mmoe ") < pos("  hmdn-mmoe "),
        "paper order:\n{report}"
    );

    // Per-partition gain: cell means recomputed from each run's best-epoch report.
    let GainOutcome::Computed(g) = &cmp.gain else {
        panic!("gain not computed: {:?}", cmp.gain)
    };
    assert_eq!(g.hmdn, Variant::plain(ModelKind::HmdnMmoe));
    assert_eq!(g.backbone, Variant::plain(ModelKind::Mmoe));
    assert_eq!(g.partition, ["gender", "age", "scenario"]);
    let mut want: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in &rows {
        let run_dir = out.join(&r["model"]).join(format!("seed-{}", r["seed"]));
        let (best, _) = best_epoch_line(&run_dir);
        for c in best["val"]["tasks"][0]["cells"].as_array().unwrap() {
            if let Some(a) = c["auc"].as_f64() {
                want.entry((r["model"].clone(), c["cell"].as_str().unwrap().to_string()))
                    .or_default()
                    .push(a);
            }
        }
    }
    let cells = read_csv(&out.join("partition_gain.csv"));
    assert_eq!(cells.len(), g.cells.len());
    assert!(cells.len() >= 10, "{} cells", cells.len());
    for c in &cells {
        let m = |model: &str| {
            let v = &want[&(model.to_string(), c["cell"].clone())];
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (b, h) = (m("mmoe"), m("hmdn-mmoe"));
        assert!((num(c, "auc_mmoe") - b).abs() < 1e-12);
        assert!((num(c, "auc_hmdn-mmoe") - h).abs() < 1e-12);
        assert!((num(c, "gain") - (h - b)).abs() < 1e-12);
        assert!(report.contains(&c["cell"]));
    }

    // The SVG: well formed, one bar per model, taller bar = higher mean AUC.
    let svg = std::fs::read_to_string(out.join("results.svg")).unwrap();
    let names = check_xml(&svg);
    assert!(names.iter().any(|n| n == "title" || n == "text"));
    let heights = attr_of_class(&svg, "bar", "height");
    assert_eq!(heights.len(), 2);
    let means: Vec<f64> = summary.iter().map(|s| num(s, "auc_mean")).collect();
    assert_eq!(heights[0] > heights[1], means[0] > means[1]);
    assert!(svg.contains(">validation AUC<") && svg.contains(">model<"));
}

#[test]
fn depth_sweep() {
    let dir = TempDir::new("compare-sweep");
    let mut a = args(&dir, &["dnn", "hmdn-mmoe"], 2);
    a.sweep = Some("depth=1,2".into());
    // A shared config: smaller MLPs for speed, and a [train] seed that compare overrides.
    let cfg = dir.write(
        "cfg.toml",
        "[model]\nhidden = [32, 16]\n[train]\nseed = 99\n",
    );
    a.config = Some(cfg);
    let cmp = compare::compare(&a, &opts(&dir)).unwrap();
    let out = &a.out;

    let rows = read_csv(&out.join("results.csv"));
    assert_eq!(rows.len(), 6);
    let key =
        |r: &BTreeMap<String, String>| format!("{}|{}|{}", r["model"], r["variant"], r["seed"]);
    let mut keys: Vec<String> = rows.iter().map(key).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "dnn||1",
            "dnn||2",
            "hmdn-mmoe|depth=1|1",
            "hmdn-mmoe|depth=1|2",
            "hmdn-mmoe|depth=2|1",
            "hmdn-mmoe|depth=2|2"
        ]
    );
    for r in &rows {
        let sub = match r["variant"].as_str() {
            "" => r["model"].clone(),
            v => format!("{}-depth{}", r["model"], v.trim_start_matches("depth=")),
        };
        let run_dir = out.join(sub).join(format!("seed-{}", r["seed"]));
        let cfg = RunConfig::load(&run_dir.join("config.toml")).unwrap();
        assert_eq!(cfg.model.hidden, [32, 16]);
        assert_eq!(cfg.train.seed.to_string(), r["seed"]);
        if let Some(d) = r["variant"].strip_prefix("depth=") {
            assert_eq!(cfg.model.rq.depth.to_string(), d);
        }
        let (best, _) = best_epoch_line(&run_dir);
        assert_eq!(
            num(r, "auc"),
            best["val"]["tasks"][0]["auc"].as_f64().unwrap()
        );
    }

    // Summary relative to dnn, recomputed.
    let summary = read_csv(&out.join("summary.csv"));
    let variants: Vec<String> = summary
        .iter()
        .map(|s| format!("{}|{}", s["model"], s["variant"]))
        .collect();
    assert_eq!(variants, ["dnn|", "hmdn-mmoe|depth=1", "hmdn-mmoe|depth=2"]);
    let aucs = |m: &str, v: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r["model"] == m && r["variant"] == v)
            .map(|r| num(r, "auc"))
            .collect()
    };
    let (dnn, _) = mean_std(&aucs("dnn", ""));
    let report = cmp.report();
    for s in &summary {
        let (m, sd) = mean_std(&aucs(&s["model"], &s["variant"]));
        assert!((num(s, "auc_mean") - m).abs() < 1e-12);
        assert!((num(s, "auc_std") - sd).abs() < 1e-12);
        let ri = ((m - 0.5) / (dnn - 0.5) - 1.0) * 100.0;
        assert!((num(s, "relaimpr_pct") - ri).abs() < 1e-9);
        assert_eq!(s["relaimpr_base"], "dnn");
        assert!(report.contains(&format!("{m:.4} ± {sd:.4}")));
    }
    assert!(report.contains("RelaImpr = (AUC − 0.5) / (AUC_dnn − 0.5) − 1"));
    assert!(!report.contains("not among the models, so RelaImpr"));
    let sweep = cmp.sweep_text().unwrap();
    for d in ["1", "2"] {
        let (m, sd) = mean_std(&aucs("hmdn-mmoe", &format!("depth={d}")));
        let line = sweep
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{d} ")))
            .unwrap();
        assert!(line.contains(&format!("{m:.4} ± {sd:.4}")), "{line}");
    }
    assert!(sweep.contains("baselines: dnn "), "{sweep}");
    // No mmoe: the per-partition gain says why it is missing.
    match &cmp.gain {
        GainOutcome::Skipped(why) => assert!(why.contains("mmoe"), "{why}"),
        g => panic!("{g:?}"),
    }
    assert!(!out.join("partition_gain.csv").exists());

    // SVG: one point per depth, one baseline line (dnn), ordered like the means.
    let svg = std::fs::read_to_string(out.join("results.svg")).unwrap();
    check_xml(&svg);
    let cy = attr_of_class(&svg, "point", "cy");
    assert_eq!(cy.len(), 2);
    assert_eq!(attr_of_class(&svg, "baseline", "y1").len(), 1);
    assert_eq!(svg.matches("class=\"bar\"").count(), 0);
    let m1 = num(&summary[1], "auc_mean");
    let m2 = num(&summary[2], "auc_mean");
    assert_eq!(cy[0] < cy[1], m1 > m2, "higher AUC is drawn higher");
    assert!(svg.contains("codebook depth D"));
}

#[test]
fn argument_errors_stop_before_training() {
    let dir = TempDir::new("compare-errors");
    let base = args(&dir, &["dnn"], 1);
    let err = |a: &CompareArgs| compare::compare(a, &opts(&dir)).unwrap_err().to_string();

    let mut a = base.clone();
    a.models = vec!["dnn".into(), "mlp".into()];
    let e = err(&a);
    assert!(
        e.contains("unknown model `mlp`") && e.contains("hmdn-pepnet"),
        "{e}"
    );

    for models in [
        vec![],
        vec![String::new()],
        vec![" ".to_string(), "".into()],
    ] {
        let mut a = base.clone();
        a.models = models;
        let e = err(&a);
        assert!(e.contains("--models") && e.contains("hmdn-mmoe"), "{e}");
    }

    let mut a = base.clone();
    a.models = vec!["mmoe".into(), "mmoe".into()];
    assert!(err(&a).contains("twice"));

    let mut a = base.clone();
    a.seeds = 0;
    assert!(err(&a).contains("--seeds must be at least 1"));

    let mut a = base.clone();
    a.sweep = Some("alpha=0.1,1".into());
    let e = err(&a);
    assert!(
        e.contains("unknown key `alpha`") && e.contains("depth") && e.contains("codebook_size"),
        "{e}"
    );

    let mut a = base.clone();
    a.sweep = Some("depth=1,2".into());
    assert!(
        err(&a).contains("hmdn-mmoe, hmdn-pepnet"),
        "sweep without hmdn models"
    );

    // Explicit RQ fixes the depth: a depth sweep is refused before the first run.
    let mut a = base.clone();
    a.models = vec!["hmdn-mmoe".into()];
    a.sweep = Some("depth=1,2".into());
    a.config = Some(dir.write("explicit.toml", "[model.rq]\nmode = \"explicit\"\n"));
    assert!(err(&a).contains("explicit"));

    // An output directory below a regular file cannot be created.
    let blocker = dir.write("blocker", "not a directory");
    let mut a = base.clone();
    a.out = blocker.join("out");
    let e = err(&a);
    assert!(e.contains(&blocker.display().to_string()), "{e}");

    // Nothing was trained by any of these.
    assert!(!base.out.join("results.csv").exists());
    assert!(!base.out.join("dnn").exists());
}

#[test]
fn binary_prints_the_table_and_reports_errors() {
    let dir = TempDir::new("compare-bin");
    let a = args(&dir, &["dnn"], 1);
    let bin = env!("CARGO_BIN_EXE_hmdn-cpu");
    let run = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin);
        c.env("HMDN_CACHE_DIR", dir.path("bin-cache"))
            .arg("compare")
            .arg("--train")
            .arg(&a.train)
            .arg("--val")
            .arg(&a.val)
            .arg("--schema")
            .arg(&a.schema)
            .arg("--out")
            .arg(&a.out)
            .args(["--epochs", "2", "--batch-size", "256", "--threads", "1"])
            .args(extra);
        c.output().unwrap()
    };
    let o = run(&["--models", "dnn", "--seeds", "1"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("± n/a"), "one seed has no std:\n{stdout}");
    assert!(stdout.contains("+0.00%"), "{stdout}");
    assert!(stderr.contains("[1/1] dnn seed 1: AUC"), "{stderr}");
    assert!(
        dir.path("bin-cache").is_dir(),
        "caches go to HMDN_CACHE_DIR"
    );
    assert_eq!(read_csv(&a.out.join("results.csv")).len(), 1);

    let o = run(&["--models", "dnn,xgboost"]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("xgboost") && stderr.contains("wide-deep"),
        "{stderr}"
    );
}
