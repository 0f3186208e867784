//! Schedules, the KD loss and SNL's exact top-N threshold.

use pibench_prune::methods::snl;
use pibench_prune::net::{ArchSpec, Network};
use pibench_prune::train::{kd_loss, KdConfig, Schedule};
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
}

#[test]
fn kd_loss_is_hinton_kd() {
    tch::manual_seed(3);
    let s = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let t = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[1i64, 2, 3, 4]);
    let kd = KdConfig {
        temperature: 4.0,
        weight: 0.9,
    };
    let got = kd_loss(&s, &t, &y, &kd).double_value(&[]);
    // Manual: (1−w)·CE + w·T²·mean_b Σ_c q·(log q − log p).
    let ce = s.cross_entropy_for_logits(&y).double_value(&[]);
    let p = (&s / 4.0).log_softmax(-1, Kind::Float);
    let q = (&t / 4.0).softmax(-1, Kind::Float);
    let kl = (&q * (q.log() - p)).sum(Kind::Float).double_value(&[]) / 4.0;
    let want = 0.1 * ce + 0.9 * 16.0 * kl;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // Identical logits: only the cross-entropy part remains.
    let same = kd_loss(&s, &s, &y, &kd).double_value(&[]);
    assert!((same - 0.1 * ce).abs() < 1e-5);
}

#[test]
fn snl_threshold_keeps_exactly_the_largest_alphas() {
    tch::manual_seed(4);
    let spec = ArchSpec::named("resnet18", 10, 32, 0.0625, 1.0, None).unwrap();
    let mut net = Network::new(&spec, Device::Cpu);
    net.attach_alphas();
    // Distinct α: the kept set must be exactly those above the N-th largest.
    tch::no_grad(|| {
        for s in &net.sites {
            let mut a = s.alpha.as_ref().unwrap().shallow_clone();
            let r = Tensor::rand(a.size(), (Kind::Float, Device::Cpu));
            a.copy_(&r);
        }
    });
    let all: Vec<f32> = {
        let v: Vec<Tensor> = net
            .sites
            .iter()
            .map(|s| s.alpha.as_ref().unwrap().detach().flatten(0, -1))
            .collect();
        Vec::try_from(&Tensor::cat(&v, 0)).unwrap()
    };
    let budget = 1234;
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let cut = sorted[budget - 1];
    assert_eq!(snl::threshold_top_n(&mut net, budget as i64), budget as i64);
    let masks: Vec<f32> = {
        let v: Vec<Tensor> = net.sites.iter().map(|s| s.mask.flatten(0, -1)).collect();
        Vec::try_from(&Tensor::cat(&v, 0)).unwrap()
    };
    for (a, m) in all.iter().zip(&masks) {
        assert_eq!(*m == 1.0, *a >= cut);
    }
    assert!(net.sites.iter().all(|s| s.alpha.is_none()));

    // All-equal α (a collapsed search) still gives exactly N.
    let mut net = Network::new(&spec, Device::Cpu);
    net.attach_alphas();
    tch::no_grad(|| {
        for s in &net.sites {
            let mut a = s.alpha.as_ref().unwrap().shallow_clone();
            let _ = a.fill_(0.0);
        }
    });
    assert_eq!(snl::threshold_top_n(&mut net, 777), 777);
    assert_eq!(net.relu_count(), 777);
}
