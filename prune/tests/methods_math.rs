//! Unit tests of the methods' mathematics: schedules, KD, SNL's recipe
//! (optimisers, λ schedule, tie-breaking), AutoReP (DaPa, hysteresis, STE),
//! ReLUPruner (Taylor terms, schedule), PrivShap (Shapley values, allocation).

use pibench_models::arch::{deepreduce::scale_channels, ArchSpec};
use pibench_models::count::Convention;
use pibench_models::graph::{FeatureShape, Init};
use pibench_prune::methods::privshap::{
    allocate, binomial, exact_shapley, monte_carlo_shapley, tree_shapley, Coalition, Utility,
};
use pibench_prune::methods::{autorep, relupruner, snl};
use pibench_prune::net::{Net, Weights};
use pibench_prune::train::{kd_loss, KdConfig, OptimizerKind, Schedule, TrainConfig};
use tch::{Device, Kind, Tensor};

#[test]
fn schedules() {
    let c = Schedule::Cosine;
    assert!((c.lr(0.1, 0, 10) - 0.1).abs() < 1e-12);
    assert!((c.lr(0.1, 5, 10) - 0.05).abs() < 1e-12);
    let s = Schedule::Step {
        every: 30,
        gamma: 0.1,
    };
    assert!((s.lr(0.1, 29, 120) - 0.1).abs() < 1e-12);
    assert!((s.lr(0.1, 30, 120) - 0.01).abs() < 1e-12);
    assert!((s.lr(0.1, 119, 120) - 1e-4).abs() < 1e-12);
    assert_eq!(Schedule::Constant.lr(1e-3, 99, 100), 1e-3);
}

#[test]
fn kd_loss_is_the_weighted_formula() {
    tch::manual_seed(3);
    let s = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let t = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[1i64, 2, 3, 4]);
    let ce = s.cross_entropy_for_logits(&y).double_value(&[]);
    let p = (&s / 4.0).log_softmax(-1, Kind::Float);
    let q = (&t / 4.0).softmax(-1, Kind::Float);
    let kl = (&q * (q.log() - p)).sum(Kind::Float).double_value(&[]) / 4.0;
    // Hinton (DeepReDuce): 0.1·CE + 0.9·T²·KL.
    let got = kd_loss(&s, &t, &y, &KdConfig::hinton(4.0, 0.9)).double_value(&[]);
    assert!((got - (0.1 * ce + 0.9 * 16.0 * kl)).abs() < 1e-5);
    // SNL's code: CE + SoftTarget(4) = CE + T²·KL (batchmean).
    let got = kd_loss(&s, &t, &y, &snl::kd()).double_value(&[]);
    assert!((got - (ce + 16.0 * kl)).abs() < 1e-5);
}

fn base_cfg() -> TrainConfig {
    TrainConfig {
        epochs: 120,
        batch_size: 128,
        lr: 0.1,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        optimizer: OptimizerKind::Sgd,
        schedule: Schedule::Cosine,
        max_steps: None,
        amp: false,
        seed: 0,
        method_lr: Some(0.5),
    }
}

#[test]
fn snl_phases_use_the_published_optimisers() {
    // snl_finetune_unstructured.py: Adam(net.parameters(), lr=1e-3), no scheduler, no weight decay.
    let s = snl::search_config(&base_cfg(), 2000, 1e-3);
    assert_eq!(s.optimizer, OptimizerKind::Adam);
    assert_eq!(s.lr, 1e-3);
    assert_eq!(s.weight_decay, 0.0);
    assert_eq!(s.schedule, Schedule::Constant);
    assert_eq!(s.method_lr, None, "α share the weights' learning rate");
    assert_eq!(s.epochs, 2000);
    assert_eq!(s.batch_size, 128);
    // SGD(lr=1e-3, momentum=0.9, weight_decay=5e-4) + CosineAnnealingLR(finetune_epochs).
    let f = snl::finetune_config(&base_cfg(), 100, 1e-3);
    assert_eq!(f.optimizer, OptimizerKind::Sgd);
    assert_eq!((f.lr, f.momentum, f.weight_decay), (1e-3, 0.9, 5e-4));
    assert!(!f.nesterov);
    assert_eq!(f.schedule, Schedule::Cosine);
    assert_eq!(f.epochs, 100);
    let p = snl::SnlConfig::published(50_000, 0);
    assert_eq!(
        (p.lambda, p.lambda_growth, p.threshold, p.patience),
        (1e-5, 1.1, 1e-2, 5)
    );
    assert!(!p.clamp);
    assert_eq!(p.select, snl::Select::Threshold);
}

#[test]
fn snl_lambda_schedule_follows_the_code() {
    // if relu_count < lowest: lowest = relu_count
    // elif relu_count >= lowest and epoch >= 5: alpha *= 1.1
    let cfg = snl::SnlConfig::published(10, 0);
    let counts = [100, 90, 95, 90, 80, 80, 85, 70, 70, 70];
    let mut lambda = cfg.lambda;
    let mut lowest = i64::MAX;
    let mut want = 1e-5f64;
    let mut low_ref = i64::MAX;
    for (epoch, &c) in counts.iter().enumerate() {
        lambda = snl::next_lambda(&cfg, lambda, epoch, c, &mut lowest);
        if c < low_ref {
            low_ref = c;
        } else if epoch >= 5 {
            want *= 1.1;
        }
        assert!(
            (lambda - want).abs() < 1e-18,
            "epoch {epoch}: {lambda} vs {want}"
        );
    }
    // Epochs 5 (80 = lowest), 6 (85), 8 and 9 (70 = lowest) grow λ: 1.1^4.
    assert!((lambda - 1e-5 * 1.1f64.powi(4)).abs() < 1e-15);
    assert_eq!(lowest, 70);
    // The previous front-end's rule, still available.
    let mut grow = snl::SnlConfig::published(75, 0);
    grow.schedule = snl::LambdaSchedule::Grow;
    grow.lambda_growth = 1.5;
    let mut l = 0;
    assert_eq!(snl::next_lambda(&grow, 1.0, 0, 80, &mut l), 1.5);
    assert_eq!(snl::next_lambda(&grow, 1.0, 0, 75, &mut l), 1.0);
}

#[test]
fn snl_top_n_breaks_ties_by_value_then_a_seeded_random_order() {
    // Distinct values: exactly the N largest.
    let v: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32).collect();
    let mut top = snl::top_n_indices(&v, 10, 1);
    top.sort_unstable();
    let mut want: Vec<usize> = (0..100).filter(|&i| v[i] >= 90.0).collect();
    want.sort_unstable();
    assert_eq!(top, want);
    // Ties: larger values first, then a seeded random order — not network order.
    let mut v = vec![0.5f32; 1000];
    v[999] = 0.9;
    let a = snl::top_n_indices(&v, 100, 7);
    assert_eq!(a[0], 999);
    assert_eq!(a.len(), 100);
    assert_eq!(
        a,
        snl::top_n_indices(&v, 100, 7),
        "deterministic for a seed"
    );
    assert_ne!(
        a,
        snl::top_n_indices(&v, 100, 8),
        "another seed, another order"
    );
    let first_hundred = a.iter().filter(|&&i| i < 100).count();
    assert!(
        first_hundred < 30,
        "ties must not favour early positions: {first_hundred}"
    );
    let late = a.iter().filter(|&&i| i >= 500).count();
    assert!((25..=75).contains(&late), "{late}");
}

#[test]
fn snl_select_threshold_and_fallback() {
    tch::manual_seed(4);
    let g = scale_channels(&ArchSpec::resnet18(), 0.0625)
        .unwrap()
        .build(FeatureShape::new(3, 32, 32), 10, Init::Zeros)
        .unwrap();
    let snl_conv = Convention {
        stem_relu: false,
        final_relu: false,
    };
    let make = || {
        let mut net = Net::new(&g, Device::Cpu, snl_conv, Weights::Fresh).unwrap();
        snl::attach_alphas(&mut net);
        tch::no_grad(|| {
            for (_, a) in snl::alphas(&net) {
                a.shallow_clone()
                    .copy_(&(Tensor::rand(a.size(), (Kind::Float, Device::Cpu)) - 0.5));
            }
        });
        net
    };
    assert!(
        snl::alphas(&make()).iter().all(|(i, _)| *i != 0),
        "no stem α under SNL's convention"
    );
    let mut cfg = snl::SnlConfig::published(5000, 3);
    let mut net = make();
    let above = snl::alpha_count(&net, cfg.threshold);
    assert_eq!(
        snl::select_mask(&mut net, &cfg, true),
        snl::Selection::Threshold
    );
    assert_eq!(net.relu_count(), above);
    let mut net = make();
    assert_eq!(
        snl::select_mask(&mut net, &cfg, false),
        snl::Selection::Fallback
    );
    assert_eq!(net.relu_count(), 5000);
    cfg.select = snl::Select::TopN;
    let mut net = make();
    assert_eq!(snl::select_mask(&mut net, &cfg, true), snl::Selection::TopN);
    assert_eq!(net.relu_count(), 5000);
    assert!(net.sites.iter().all(|s| s.gate.is_none()));
}

/// `E[(ReLU(Z) − p(Z))²]`-minimising coefficients by numerical least squares
/// (Simpson quadrature of the normal equations over μ ± 12σ).
#[allow(clippy::needless_range_loop)] // Normal equations read best with indices.
fn numeric_fit(mu: f64, sigma: f64, degree: usize) -> Vec<f64> {
    let n = 20_000;
    let (lo, hi) = (mu - 12.0 * sigma, mu + 12.0 * sigma);
    let h = (hi - lo) / n as f64;
    let k = degree + 1;
    let mut a = vec![vec![0.0; k]; k];
    let mut b = vec![0.0; k];
    for i in 0..=n {
        let z = lo + i as f64 * h;
        let w = if i == 0 || i == n {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        };
        let p = (-(z - mu).powi(2) / (2.0 * sigma * sigma)).exp()
            / (sigma * (2.0 * std::f64::consts::PI).sqrt());
        let wp = w * p * h / 3.0;
        for r in 0..k {
            b[r] += wp * z.max(0.0) * z.powi(r as i32);
            for c in 0..k {
                a[r][c] += wp * z.powi((r + c) as i32);
            }
        }
    }
    // Gaussian elimination.
    for col in 0..k {
        let piv = (col..k)
            .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
            .unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        for r in 0..k {
            if r != col {
                let f = a[r][col] / a[col][col];
                for c in 0..k {
                    a[r][c] -= f * a[col][c];
                }
                b[r] -= f * b[col];
            }
        }
    }
    (0..k).map(|r| b[r] / a[r][r]).collect()
}

#[test]
fn dapa_coefficients_are_the_least_squares_fit() {
    for (mu, sigma) in [
        (0.0, 1.0),
        (0.0, 2.0f64.sqrt()),
        (0.7, 0.5),
        (-1.2, 0.8),
        (2.0, 3.0),
        (-0.3, 0.05),
    ] {
        let fit = numeric_fit(mu, sigma, 2);
        let (c2, c1, c0) = autorep::dapa2(mu, sigma);
        for (got, want, name) in [(c0, fit[0], "c0"), (c1, fit[1], "c1"), (c2, fit[2], "c2")] {
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "N({mu}, {sigma}²) {name}: {got} vs {want}"
            );
        }
        let fit = numeric_fit(mu, sigma, 1);
        let (z2, d1, d0) = autorep::dapa1(mu, sigma);
        assert_eq!(z2, 0.0);
        assert!((d1 - fit[1]).abs() <= 1e-3 && (d0 - fit[0]).abs() <= 1e-3 * fit[0].abs().max(1.0));
    }
    // The paper's Fig. 6 example: N(0, 2) → 0.14 Z² + 0.5 Z + 0.28.
    let (c2, c1, c0) = autorep::dapa2(0.0, 2.0f64.sqrt());
    assert!((c2 - 0.14).abs() < 0.005 && (c1 - 0.5).abs() < 1e-6 && (c0 - 0.28).abs() < 0.005);
}

#[test]
fn hysteresis_is_eq10_and_ste_passes_softplus() {
    let t = 0.003;
    // (old m, m_W) → new m.
    let cases = [
        (1.0, 0.5, 1.0),
        (1.0, -0.002, 1.0),
        (1.0, -0.003, 0.0),
        (1.0, -0.5, 0.0),
        (0.0, 0.003, 0.0),
        (0.0, 0.002, 0.0),
        (0.0, -0.5, 0.0),
        (0.0, 0.0031, 1.0),
        (0.0, 0.5, 1.0),
    ];
    let old = Tensor::from_slice(&cases.map(|c| c.0 as f32));
    let aux = Tensor::from_slice(&cases.map(|c| c.1 as f32));
    let got = Vec::<f32>::try_from(&autorep::hysteresis(&old, &aux, t)).unwrap();
    for (c, g) in cases.iter().zip(&got) {
        assert_eq!(*g as f64, c.2, "m = {}, m_W = {}", c.0, c.1);
    }
    let aux = Tensor::from_slice(&[-1.0f32, 0.0, 2.0]).set_requires_grad(true);
    let mask = Tensor::from_slice(&[0.0f32, 1.0, 1.0]);
    let g = autorep::ste(&mask, &aux);
    assert_eq!(
        Vec::<f32>::try_from(&g.detach()).unwrap(),
        vec![0.0, 1.0, 1.0]
    );
    (g * Tensor::from_slice(&[1.0f32, 2.0, 3.0]))
        .sum(Kind::Float)
        .backward();
    let grad = Vec::<f32>::try_from(&aux.grad()).unwrap();
    let sp = |x: f32| (1.0 + x.exp()).ln();
    for (k, (x, w)) in [(-1.0f32, 1.0f32), (0.0, 2.0), (2.0, 3.0)]
        .iter()
        .enumerate()
    {
        assert!((grad[k] - w * sp(*x)).abs() < 1e-6);
    }
}

#[test]
fn relupruner_taylor_terms_match_finite_differences() {
    tch::set_num_threads(1);
    tch::manual_seed(5);
    let g = scale_channels(&ArchSpec::resnet18(), 0.0625)
        .unwrap()
        .build(FeatureShape::new(3, 16, 16), 10, Init::Seeded(5))
        .unwrap();
    let mut net = Net::new(&g, Device::Cpu, Convention::default(), Weights::FromGraph).unwrap();
    let x = Tensor::randn([6, 3, 16, 16], (Kind::Double, Device::Cpu));
    let y = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]);
    net.vs.double();
    let site = 3usize;
    let shape = net.sites[site].shape;
    // ∂L/∂a via the probe, z via the tap.
    let probe = Tensor::zeros(
        [6, shape[0], shape[1], shape[2]],
        (Kind::Double, Device::Cpu),
    )
    .set_requires_grad(true);
    net.sites[site].probe = Some(probe.shallow_clone());
    let mut z = None;
    let loss = net
        .forward_tap(&x, false, None, &mut |i, input, _| {
            if i == site {
                z = Some(input.detach());
            }
        })
        .log_softmax(-1, Kind::Double)
        .nll_loss(&y);
    assert_eq!(loss.kind(), Kind::Double);
    loss.backward();
    let z = z.unwrap();
    let (first, second) = relupruner::taylor_terms(&z, &probe.grad());
    net.sites[site].probe = None;
    // Finite difference of the loss in one relaxed gate g_k at g = 1, at the
    // element with the largest first-order term.
    let arg = first.abs().flatten(0, -1).argmax(0, false).int64_value(&[]);
    let k = [
        arg / (shape[1] * shape[2]),
        (arg / shape[2]) % shape[1],
        arg % shape[2],
    ];
    let loss_at = |net: &mut Net, gk: f64| -> f64 {
        let gate = Tensor::ones(shape, (Kind::Double, Device::Cpu));
        let _ = gate.get(k[0]).get(k[1]).get(k[2]).fill_(gk);
        net.sites[site].gate = Some(gate);
        let l = tch::no_grad(|| {
            net.forward_t(&x, false)
                .log_softmax(-1, Kind::Double)
                .nll_loss(&y)
                .double_value(&[])
        });
        net.sites[site].gate = None;
        l
    };
    let h = 1e-6;
    let fd = (loss_at(&mut net, 1.0 + h) - loss_at(&mut net, 1.0 - h)) / (2.0 * h);
    let got = first.get(k[0]).get(k[1]).get(k[2]).double_value(&[]);
    assert!(fd.abs() > 1e-9, "the largest first-order term is not zero");
    assert!(
        (got - fd).abs() <= 1e-3 * fd.abs(),
        "first-order {got} vs finite difference {fd}"
    );
    // Second order: E_b[(B·∂L/∂a_b·(σ(z_b) − z_b))²].
    let b = 6.0;
    let d = z.relu() - &z;
    let per = probe.grad() * &d * b;
    let want = (&per * &per).mean_dim(&[0i64][..], false, Kind::Double);
    assert!((second - want).abs().max().double_value(&[]) < 1e-12);
}

#[test]
fn relupruner_progressive_schedule() {
    let cfg = relupruner::ReluprunerConfig {
        budget: 100,
        taylor_order: 2,
        layer_weight: true,
        ema: 0.9,
        window: 10,
        warmup: 5,
        target_fraction: 0.6,
        interval: 100,
        epochs: 150,
    };
    assert_eq!(relupruner::keep_ratio(&cfg, 0.1, 0), 1.0);
    assert_eq!(relupruner::keep_ratio(&cfg, 0.1, 4), 1.0);
    assert!((relupruner::keep_ratio(&cfg, 0.1, 5) - 1.0).abs() < 1e-12);
    // Target epoch 5 + 0.6·145 = 92.
    assert_eq!(relupruner::keep_ratio(&cfg, 0.1, 92), 0.1);
    let mid = relupruner::keep_ratio(&cfg, 0.1, 48);
    let p = (43.0f64 / 87.0).powf(1.5);
    assert!((mid - (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))).abs() < 1e-12);
    let mut last = 1.0;
    for e in 0..150 {
        let r = relupruner::keep_ratio(&cfg, 0.1, e);
        assert!(r <= last + 1e-12);
        last = r;
    }
}

/// A 4-player game written out by hand.
fn toy(s: Coalition) -> f64 {
    // Players 0 and 1 only help together; 2 always adds 0.2; 3 adds 0.1 with 2.
    let has = |i: u32| s >> i & 1 == 1;
    let mut u = 0.05;
    if has(0) && has(1) {
        u += 0.4;
    }
    if has(2) {
        u += 0.2;
        if has(3) {
            u += 0.1;
        }
    }
    if has(3) {
        u += 0.02;
    }
    u
}

#[test]
fn shapley_values_of_a_four_layer_toy() {
    // By hand: players 0 and 1 split the 0.4 synergy (0.2 each); player 2
    // gets 0.2 plus half of the 0.1 synergy with 3; player 3 gets 0.05 + 0.02.
    let want = [0.2, 0.2, 0.25, 0.07];
    let mut u = Utility::new(toy);
    let exact = exact_shapley(4, &mut u);
    for (e, w) in exact.iter().zip(want) {
        assert!((e - w).abs() < 1e-12, "{exact:?}");
    }
    // Efficiency: the values sum to U(N) − U(∅).
    assert!((exact.iter().sum::<f64>() - (toy(15) - toy(0))).abs() < 1e-12);
    // Tree trimming with nothing trimmed is exact.
    let mut u = Utility::new(toy);
    let tree = tree_shapley(4, &mut u, -1.0);
    for (t, e) in tree.iter().zip(&exact) {
        assert!((t - e).abs() < 1e-12, "{tree:?} vs {exact:?}");
    }
    assert!(u.evaluations <= 16);
    // A threshold trims nodes whose U(S∪i) is at most it (and evaluates fewer coalitions).
    let mut u = Utility::new(toy);
    let trimmed = tree_shapley(4, &mut u, 0.5);
    assert!(u.evaluations < 16, "{}", u.evaluations);
    assert!(trimmed.iter().zip(&exact).all(|(t, e)| (t - e).abs() < 0.2));
    // Monte Carlo approaches the exact values.
    let mut u = Utility::new(toy);
    let mc = monte_carlo_shapley(4, &mut u, 4000, 1);
    for (m, e) in mc.iter().zip(&exact) {
        assert!((m - e).abs() < 0.02, "{mc:?}");
    }
    assert_eq!(binomial(5, 2), 10.0);
}

#[test]
fn budget_allocation_is_exact_and_capped() {
    let sv = [0.5, 0.3, 0.2, -0.1];
    let sizes = [100, 1000, 1000, 1000];
    let a = allocate(&sv, &sizes, 1000);
    assert_eq!(a.iter().sum::<u64>(), 1000);
    assert_eq!(a[0], 100, "capped at the layer size");
    assert_eq!(a[3], 0, "negative values get nothing");
    // The excess 400 is shared 3:2 between layers 1 and 2.
    assert_eq!((a[1], a[2]), (300 + 240, 200 + 160));
    let a = allocate(&[1.0, 1.0, 1.0], &[3, 3, 3], 7);
    assert_eq!(a.iter().sum::<u64>(), 7);
    assert!(a.iter().all(|&x| x <= 3));
    assert_eq!(allocate(&[0.0, 0.0], &[5, 5], 4), vec![2, 2]);
}
