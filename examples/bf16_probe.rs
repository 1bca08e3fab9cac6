//! What a bf16 (or f16) frozen base would cost on the CPU backend: burn-flex 0.21's matmul at
//! the SmolLM2 training shapes in f32, in bf16 / f16 (weights and activations cast), and as a
//! bf16 weight cast to f32 at each use (what a frozen bf16 base under f32 adapters would do),
//! plus whether each result is finite and how far it is from f32.
//!
//!     cargo run --release --example bf16_probe
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{DType, Distribution, Tensor};

type B = Flex;

fn time<F: FnMut() -> Tensor<B, 2>>(mut f: F) -> (f64, Tensor<B, 2>) {
    let mut out = f(); // warm-up (and the result)
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        out = f();
        let _ = out.clone().slice([0..1, 0..1]).into_data();
    }
    (t.elapsed().as_secs_f64() / reps as f64, out)
}

fn main() {
    let dev = Default::default();
    // tokens × hidden · hidden × intermediate: SmolLM2's gate projection on 512 tokens
    for (m, k, n) in [(512, 576, 1536), (512, 1536, 576), (64, 576, 49152)] {
        let x = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<B, 2>::random([k, n], Distribution::Normal(0.0, 0.05), &dev);
        let flops = 2.0 * (m * k * n) as f64;
        let (t32, y32) = time(|| x.clone().matmul(w.clone()));
        let want: Vec<f32> = y32.into_data().to_vec().unwrap();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        println!("[{m}×{k}]·[{k}×{n}]  f32: {:.1} GFLOP/s", flops / t32 / 1e9);
        for (name, dt) in [("bf16", DType::BF16), ("f16", DType::F16)] {
            let (xh, wh) = (x.clone().cast(dt), w.clone().cast(dt));
            let both = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                time(|| xh.clone().matmul(wh.clone()))
            }));
            let cast = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                time(|| x.clone().matmul(wh.clone().cast(DType::F32)))
            }));
            for (how, r) in [
                (format!("{name} × {name}"), both),
                (format!("{name} weight → f32"), cast),
            ] {
                match r {
                    Ok((t, y)) => {
                        let got: Vec<f32> = y
                            .cast(DType::F32)
                            .into_data()
                            .convert::<f32>()
                            .to_vec()
                            .unwrap();
                        let err = got
                            .iter()
                            .zip(&want)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max);
                        println!(
                            "    {how:<22} {:>7.1} GFLOP/s  ({:.2}× f32's time)  max |err| / max |y| = {:.1e}",
                            flops / t / 1e9,
                            t / t32,
                            err / scale
                        );
                    }
                    Err(_) => println!("    {how:<22} panicked (unsupported)"),
                }
            }
        }
    }
}
