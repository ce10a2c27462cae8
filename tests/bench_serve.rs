//! `bench --serve`'s request loop (`bench::serve`): one JSON line per request, with as many
//! step times as asked, errors for lines it cannot read, and a stop at `quit`.

use hmdn_cpu::bench::serve;
use hmdn_cpu::config::ModelKind;

/// Runs `serve` on `input` for `kind` at batch 8 and parses its reply lines.
fn replies(kind: ModelKind, input: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    serve(kind, 8, input.as_bytes(), &mut out).expect("serve");
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every reply is one JSON line"))
        .collect()
}

#[test]
fn serve_answers_each_request_with_its_step_times() {
    let input = "train 3\nbogus 1\n\ninfer 2\ntrain x\nquit\ntrain 5\n";
    let lines = replies(ModelKind::Dnn, input);
    // ready, train 3, error, infer 2, error; nothing after `quit`.
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0]["ready"], true);
    assert_eq!(lines[0]["model"], "dnn");
    assert_eq!(lines[0]["batch"], 8);
    let times = |v: &serde_json::Value| -> Vec<f64> {
        v["step_s"]
            .as_array()
            .expect("step_s")
            .iter()
            .map(|t| t.as_f64().expect("a number"))
            .collect()
    };
    assert_eq!(lines[1]["op"], "train");
    let t = times(&lines[1]);
    assert_eq!(t.len(), 3);
    assert!(t.iter().all(|&s| s > 0.0 && s.is_finite()), "{t:?}");
    assert!(lines[2]["error"].as_str().unwrap().starts_with("line 2:"));
    assert_eq!(lines[3]["op"], "infer");
    assert_eq!(times(&lines[3]).len(), 2);
    assert!(lines[4]["error"].as_str().unwrap().starts_with("line 5:"));
}

#[test]
fn serve_ab_alternates_a_switch_step_by_step() {
    let input = "ab 5 lanes\nab 4 factoring\nab 2 sideways\nab 2 distinct\nab 3 awake\n";
    let lines = replies(ModelKind::HmdnMmoe, input);
    // ready, four A/B replies, one error for the unknown switch.
    assert_eq!(lines.len(), 6, "{lines:?}");
    let count = |v: &serde_json::Value, key: &str| v[key].as_array().expect(key).len();
    assert_eq!(lines[1]["op"], "ab");
    assert_eq!(lines[1]["switch"], "lanes");
    // Off first: steps 0, 2, 4 off, 1, 3 on.
    assert_eq!(
        (count(&lines[1], "off_s"), count(&lines[1], "on_s")),
        (3, 2)
    );
    assert_eq!(lines[2]["switch"], "factoring");
    assert_eq!(
        (count(&lines[2], "off_s"), count(&lines[2], "on_s")),
        (2, 2)
    );
    assert!(lines[3]["error"].as_str().unwrap().starts_with("line 3:"));
    assert_eq!(lines[4]["switch"], "distinct");
    assert_eq!(lines[5]["switch"], "awake");
    assert_eq!(
        (count(&lines[5], "off_s"), count(&lines[5], "on_s")),
        (2, 1)
    );
}

/// A request for more steps than `MAX_SERVE_STEPS` (whose step times would not fit in memory
/// at the extreme) gets an error line naming the limit, and the loop goes on.
#[test]
fn serve_refuses_absurd_step_counts() {
    let max = hmdn_cpu::bench::MAX_SERVE_STEPS;
    let input = format!(
        "train {}\ninfer {}\nab-infer 99999999999 lanes\ntrain 1\n",
        max + 1,
        usize::MAX
    );
    let lines = replies(ModelKind::Dnn, &input);
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (i, l) in lines[1..4].iter().enumerate() {
        let e = l["error"].as_str().expect("an error line");
        assert!(e.starts_with(&format!("line {}:", i + 1)), "{e}");
        assert!(e.contains(&format!("at most {max} steps")), "{e}");
    }
    assert_eq!(lines[4]["op"], "train");
}
