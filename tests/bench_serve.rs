//! `bench --serve`'s request loop (`bench::serve`): one JSON line per request, with as many
//! step times as asked, errors for lines it cannot read, and a stop at `quit`.

use hmdn_cpu::bench::serve;
use hmdn_cpu::config::ModelKind;

#[test]
fn serve_answers_each_request_with_its_step_times() {
    let input = "train 3\nbogus 1\n\ninfer 2\ntrain x\nquit\ntrain 5\n";
    let mut out = Vec::new();
    serve(ModelKind::Dnn, 8, input.as_bytes(), &mut out).expect("serve");
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every reply is one JSON line"))
        .collect();
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
