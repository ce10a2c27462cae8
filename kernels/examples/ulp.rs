//! Error histogram of the SIMD sigmoid (ulp vs libm-based reference over [-110, 110]) and the
//! largest softmax difference, per SIMD path: `cargo run --release -p hmdn-kernels --example ulp`.

fn ulps(a: f32, b: f32) -> u64 {
    if a == b {
        return 0;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i64::from(i32::MIN) - i64::from(i)
        } else {
            i64::from(i)
        }
    };
    (key(a) - key(b)).unsigned_abs()
}
fn main() {
    println!("{}", hmdn_kernels::simd_info());
    let n = 4_000_000;
    let x: Vec<f32> = (0..n)
        .map(|i| -110.0 + 220.0 * (i as f32 / n as f32))
        .collect();
    for p in hmdn_kernels::available_paths() {
        let mut f = vec![0.0f32; n];
        hmdn_kernels::with_path(p, || {
            hmdn_kernels::act::scaled_sigmoid_forward(&mut f, &x, 1.0)
        });
        let mut r = vec![0.0f32; n];
        hmdn_kernels::reference::scaled_sigmoid_forward(&mut r, &x, 1.0);
        let mut hist = [0usize; 6];
        for i in 0..n {
            hist[(ulps(f[i], r[i]) as usize).min(5)] += 1;
        }
        let xs: Vec<f32> = (0..n)
            .map(|i| -30.0 + 60.0 * (i as f32 / n as f32))
            .collect();
        let mut sf = vec![0.0f32; n];
        hmdn_kernels::with_path(p, || {
            hmdn_kernels::softmax::softmax_rows_forward(&mut sf, &xs, 64)
        });
        let mut sr = vec![0.0f32; n];
        hmdn_kernels::reference::softmax_rows_forward(&mut sr, &xs, 64);
        let mx = (0..n).map(|i| ulps(sf[i], sr[i])).max().unwrap();
        println!("{p:?}: sigmoid ulp histogram 0..5+ {hist:?}; softmax(n=64) max ulp {mx}");
    }
}
