//! Golden values for the stage-1/2 losses against the PyTorch formulas
//! (fixtures: `python3 scripts/golden_losses.py`, torch version recorded in each JSON).

mod support;

use burn::backend::{Autodiff, Flex};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use support::{floats, json_fixture, max_abs, to_vec};
use t1_train::loss::{corpus_nce, info_nce, sft_loss};

type B = Autodiff<Flex>;

fn tensor2(v: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

#[test]
fn sft_loss_equals_cross_entropy_with_ignore_index() {
    let f = json_fixture("losses/sft.json");
    let [b, s, v] = [2usize, 6, 11];
    let logits = Tensor::<B, 3>::from_data(
        TensorData::new(floats(&f["logits"]), [b, s, v]),
        &Default::default(),
    );
    let labels: Vec<i64> = f["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let mask: Vec<bool> = labels.iter().map(|&l| l != -100).collect();
    let targets: Vec<i64> = labels.iter().map(|&l| l.max(0)).collect();
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [b, s]), &Default::default());
    let lp = log_softmax(logits, 2)
        .gather(2, t.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2);
    let m =
        Tensor::<B, 2, Bool>::from_data(TensorData::new(mask.clone(), [b, s]), &Default::default());
    let out = sft_loss(lp, m);
    assert_eq!(out.tokens, mask.iter().filter(|&&x| x).count());
    let got = to_vec(out.loss)[0];
    let want = f["loss"].as_f64().unwrap() as f32;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");

    // all masked: zero, not NaN
    let lp = Tensor::<B, 2>::zeros([1, 3], &Default::default());
    let none = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(vec![false; 3], [1, 3]),
        &Default::default(),
    );
    let out = sft_loss(lp, none);
    assert_eq!((out.tokens, to_vec(out.loss)[0]), (0, 0.0));
}

#[test]
fn info_nce_equals_the_pytorch_formula_with_gradients() {
    let f = json_fixture("losses/info_nce.json");
    let (n, g, d) = (4usize, 3usize, 16usize);
    let tau = f["tau"].as_f64().unwrap();
    for (key, symmetric) in [("one_way", false), ("symmetric", true)] {
        let q = tensor2(floats(&f["queries"]), [n, d]).require_grad();
        let docs = tensor2(floats(&f["docs"]), [n * g, d]).require_grad();
        let out = info_nce(q.clone(), docs.clone(), g, tau, symmetric, None);
        let got = to_vec(out.loss.clone())[0];
        let want = f[key]["loss"].as_f64().unwrap() as f32;
        assert!((got - want).abs() < 1e-4, "{key}: {got} vs {want}");
        let grads = out.loss.backward();
        let host = |t: Tensor<Flex, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        let gq = host(q.grad(&grads).unwrap());
        let gd = host(docs.grad(&grads).unwrap());
        let dq = max_abs(&gq, &floats(&f[key]["grad_queries"]));
        let dd = max_abs(&gd, &floats(&f[key]["grad_docs"]));
        assert!(dq < 1e-4 && dd < 1e-4, "{key}: grad differs by {dq} / {dd}");
        assert!((out.accuracy - f["accuracy"].as_f64().unwrap()).abs() < 1e-9);
        assert!((out.pos_sim - f["pos_sim"].as_f64().unwrap()).abs() < 1e-5);
        assert!((out.neg_sim - f["neg_sim"].as_f64().unwrap()).abs() < 1e-5);
    }
}

#[test]
fn ignored_columns_leave_the_softmax() {
    // query 1's group repeats query 0's positive: ignoring that column for query 0 gives the
    // loss of a batch without it
    let f = json_fixture("losses/info_nce.json");
    let (n, g, d) = (4usize, 3usize, 16usize);
    let q = tensor2(floats(&f["queries"]), [n, d]);
    let mut dv = floats(&f["docs"]);
    let pos0: Vec<f32> = dv[..d].to_vec();
    dv[4 * d..5 * d].copy_from_slice(&pos0); // row 4 = query 1's first hard negative
    let docs = tensor2(dv.clone(), [n * g, d]);
    let mut mask = vec![false; n * n * g];
    mask[4] = true; // query 0, column 4
    let m = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [n, n * g]), &Default::default());
    let masked = to_vec(info_nce(q.clone(), docs.clone(), g, 0.05, false, Some(m)).loss)[0];
    let unmasked = to_vec(info_nce(q.clone(), docs, g, 0.05, false, None).loss)[0];
    // reference: query 0's CE over the 11 other columns, others unchanged
    let qn: Vec<f32> = to_vec(t1_train::loss::contrastive::l2_normalize(q.clone()));
    let dn: Vec<f32> = to_vec(t1_train::loss::contrastive::l2_normalize(tensor2(
        dv,
        [n * g, d],
    )));
    let mut total = 0.0f64;
    for i in 0..n {
        let s: Vec<f64> = (0..n * g)
            .map(|j| {
                (0..d)
                    .map(|k| (qn[i * d + k] * dn[j * d + k]) as f64)
                    .sum::<f64>()
                    / 0.05
            })
            .collect();
        let cols: Vec<usize> = (0..n * g).filter(|&j| !(i == 0 && j == 4)).collect();
        let mx = cols.iter().map(|&j| s[j]).fold(f64::NEG_INFINITY, f64::max);
        let lse = cols.iter().map(|&j| (s[j] - mx).exp()).sum::<f64>().ln() + mx;
        total += lse - s[i * g];
    }
    let want = (total / n as f64) as f32;
    assert!((masked - want).abs() < 1e-4, "{masked} vs {want}");
    assert!(
        unmasked > masked + 0.1,
        "the duplicate positive should hurt when not ignored"
    );
    // statistics leave the ignored column out too: query 0's tie with its duplicate is no miss
    let m = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(mask_again(n, g), [n, n * g]),
        &Default::default(),
    );
    let with = info_nce(
        q.clone(),
        tensor2(dup_docs(&f, d), [n * g, d]),
        g,
        0.05,
        false,
        Some(m),
    );
    let without = info_nce(
        q,
        tensor2(dup_docs(&f, d), [n * g, d]),
        g,
        0.05,
        false,
        None,
    );
    assert!(
        with.accuracy > without.accuracy,
        "{} vs {}",
        with.accuracy,
        without.accuracy
    );
}

fn mask_again(n: usize, g: usize) -> Vec<bool> {
    let mut mask = vec![false; n * n * g];
    mask[4] = true;
    mask
}

/// The fixture's documents with query 0's positive copied into row 4.
fn dup_docs(f: &serde_json::Value, d: usize) -> Vec<f32> {
    let mut dv = floats(&f["docs"]);
    let pos0: Vec<f32> = dv[..d].to_vec();
    dv[4 * d..5 * d].copy_from_slice(&pos0);
    dv
}

/// Host reference for `corpus_nce`: per pair, −log of the pair document's softmax share over the
/// documents not ignored, in f64; mean over pairs.
fn corpus_nce_reference(
    q: &[f32],
    docs: &[f32],
    d: usize,
    pairs: &[(usize, usize)],
    ignore: &[Vec<usize>],
    tau: f64,
) -> f64 {
    let n = docs.len() / d;
    let mut total = 0.0;
    for (k, &(r, g)) in pairs.iter().enumerate() {
        let row = &q[r * d..(r + 1) * d];
        let norm = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let s: Vec<f64> = (0..n)
            .map(|j| {
                row.iter()
                    .zip(&docs[j * d..(j + 1) * d])
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    / norm
                    / tau
            })
            .collect();
        let z: f64 = (0..n)
            .filter(|j| *j == g || !ignore[k].contains(j))
            .map(|j| s[j].exp())
            .sum();
        total += -(s[g].exp() / z).ln();
    }
    total / pairs.len() as f64
}

#[test]
fn corpus_nce_equals_the_reference_and_its_gradient_finite_differences() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (r, n, d) = (3, 7, 5);
    let q: Vec<f32> = (0..r * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut docs: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    for j in 0..n {
        let norm = docs[j * d..(j + 1) * d]
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt();
        docs[j * d..(j + 1) * d].iter_mut().for_each(|x| *x /= norm);
    }
    // row 0 has two relevant documents (each ignores the other), row 2 has one plus an excluded
    // document, row 1 none
    let pairs = [(0, 1), (0, 4), (2, 6)];
    let ignore = vec![vec![4], vec![1], vec![0, 6]];
    let tau = 0.3;
    let qt = tensor2(q.clone(), [r, d]).require_grad();
    let loss = corpus_nce(
        qt.clone(),
        tensor2(docs.clone(), [n, d]),
        &pairs,
        &ignore,
        tau,
    );
    let got = to_vec(loss.clone())[0] as f64;
    let want = corpus_nce_reference(&q, &docs, d, &pairs, &ignore, tau);
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // ignoring changes the value (the mask is not a no-op)
    let plain = corpus_nce_reference(&q, &docs, d, &pairs, &[vec![], vec![], vec![]], tau);
    assert!((plain - want).abs() > 1e-3);
    let grads = loss.backward();
    let g = to_vec(Tensor::<B, 2>::from_inner(qt.grad(&grads).unwrap()));
    for i in 0..r * d {
        let h = 1e-3f32;
        let (mut up, mut down) = (q.clone(), q.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (corpus_nce_reference(&up, &docs, d, &pairs, &ignore, tau)
            - corpus_nce_reference(&down, &docs, d, &pairs, &ignore, tau))
            / (2.0 * h as f64);
        assert!(
            (g[i] as f64 - fd).abs() < 1e-3,
            "grad {i}: {} vs {fd}",
            g[i]
        );
    }
    // row 1 has no pair: no gradient reaches it
    assert!(g[d..2 * d].iter().all(|&x| x.abs() < 1e-9));
}

/// LaSER's alignment losses and their gradients against `scripts/golden_latent.py`.
#[test]
fn latent_alignment_losses_equal_the_pytorch_formulas_with_gradients() {
    use t1_train::loss::latent::{Trajectory, score_kl, trajectory_loss};
    let f = json_fixture("losses/latent.json");
    let dim = |k: &str| f[k].as_u64().unwrap() as usize;
    let (b, k, d, m) = (dim("b"), dim("k"), dim("d"), dim("m"));
    let (ts, tt) = (f["tau_s"].as_f64().unwrap(), f["tau_t"].as_f64().unwrap());
    let dev = Default::default();
    let ignore: Vec<bool> = f["ignore"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect();
    assert!(
        ignore.iter().any(|&x| x),
        "the fixture masks some documents"
    );
    for name in ["output_kl", "trajectory_cosine", "trajectory_kl"] {
        let lat = Tensor::<B, 3>::from_data(TensorData::new(floats(&f["latent"]), [b, k, d]), &dev)
            .require_grad();
        let exp =
            Tensor::<B, 3>::from_data(TensorData::new(floats(&f["explicit"]), [b, k, d]), &dev)
                .require_grad();
        let tea = tensor2(floats(&f["teacher"]), [b, d]).require_grad();
        let docs = tensor2(floats(&f["docs"]), [m, d]).require_grad();
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(ignore.clone(), [b, m]), &dev);
        let loss = match name {
            "output_kl" => {
                let s = lat.clone().mean_dim(1).reshape([b, d]);
                score_kl(s, tea.clone(), docs.clone(), ts, tt, Some(mask))
            }
            "trajectory_cosine" => trajectory_loss(
                lat.clone(),
                exp.clone(),
                Trajectory::Cosine,
                docs.clone(),
                ts,
                tt,
                Some(mask),
            ),
            _ => trajectory_loss(
                lat.clone(),
                exp.clone(),
                Trajectory::Kl,
                docs.clone(),
                ts,
                tt,
                Some(mask),
            ),
        };
        let got = to_vec(loss.clone())[0];
        let want = f[name]["loss"].as_f64().unwrap() as f32;
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "{name}: {got} vs {want}"
        );
        let grads = loss.backward();
        let check = |key: &str, got: Option<Vec<f32>>| {
            let want = floats(&f[name][key]);
            let got = got.unwrap_or_else(|| vec![0.0; want.len()]);
            let diff = max_abs(&got, &want);
            assert!(diff < 2e-4, "{name}: {key} differs by {diff}");
        };
        let host2 = |t: Tensor<Flex, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        let host3 = |t: Tensor<Flex, 3>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        check("grad_latent", lat.grad(&grads).map(host3));
        check("grad_explicit", exp.grad(&grads).map(host3));
        check("grad_teacher", tea.grad(&grads).map(host2));
        check("grad_docs", docs.grad(&grads).map(host2));
    }
}
