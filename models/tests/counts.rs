//! Exact ReLU counts of the reference architectures.

use pibench_models::arch::ArchSpec;
use pibench_models::count::{count, relu_count, Convention};
use pibench_models::graph::{FeatureShape, Init};

const CIFAR: FeatureShape = FeatureShape::new(3, 32, 32);
const TINY: FeatureShape = FeatureShape::new(3, 64, 64);

fn conv(stem_relu: bool, final_relu: bool) -> Convention {
    Convention {
        stem_relu,
        final_relu,
    }
}

fn relus(spec: &ArchSpec, input: FeatureShape, c: Convention) -> u64 {
    let net = spec.build(input, 100, Init::Zeros).unwrap();
    relu_count(&net, c)
}

#[test]
fn resnet18_counts() {
    let r18 = ArchSpec::resnet18();
    assert_eq!(relus(&r18, CIFAR, conv(true, false)), 557_056);
    assert_eq!(relus(&r18, CIFAR, conv(false, false)), 491_520);
    assert_eq!(relus(&r18, TINY, conv(true, false)), 2_228_224);
    assert_eq!(relus(&r18, TINY, conv(false, false)), 1_966_080);
}

/// Bottleneck ResNets, derived by hand (CIFAR 32×32; stage s has planes
/// p = 64·2^(s−1), 4p output channels, the first block of stages 2–4 strides
/// its 3×3 conv, so its relu1 still runs at the previous resolution):
/// * stem: 64·32·32 = 65,536
/// * stage 1 (32×32 = 1024 px, p = 64): a block is relu1 64·1024 + relu2
///   64·1024 + relu3 256·1024 = 393,216; three blocks 1,179,648
/// * stage 2 (p = 128, 32→16): first block 128·1024 + 128·256 + 512·256 =
///   294,912; others 128·256·2 + 512·256 = 196,608 (×3) → 884,736
/// * stage 3 (p = 256, 16→8): first 256·256 + 256·64 + 1024·64 = 147,456;
///   others 256·64·2 + 1024·64 = 98,304 (×5 for ResNet-50: 638,976;
///   ×22 for ResNet-101: 2,310,144)
/// * stage 4 (p = 512, 8→4): first 512·64 + 512·16 + 2048·16 = 73,728;
///   others 512·16·2 + 2048·16 = 49,152 (×2) → 172,032
///
/// ResNet-50: 65,536 + 1,179,648 + 884,736 + 638,976 + 172,032 = 2,940,928;
/// ResNet-101: 65,536 + 1,179,648 + 884,736 + 2,310,144 + 172,032 = 4,612,096.
#[test]
fn bottleneck_resnet_counts() {
    let r50 = ArchSpec::parse("resnet50").unwrap();
    assert_eq!(relus(&r50, CIFAR, conv(true, false)), 2_940_928);
    assert_eq!(relus(&r50, CIFAR, conv(false, false)), 2_940_928 - 65_536);
    let r101 = ArchSpec::parse("ResNet101").unwrap();
    assert_eq!(relus(&r101, CIFAR, conv(true, false)), 4_612_096);
    // Tiny-ImageNet (64×64): every site has 4× the elements.
    assert_eq!(relus(&r50, TINY, conv(true, false)), 4 * 2_940_928);
    let net = r50.build(CIFAR, 100, Init::Zeros).unwrap();
    // 1 stem + 3 sites per block × 16 blocks.
    assert_eq!(net.sites().count(), 1 + 3 * 16);
    assert!(net.sites().any(|s| s.name == "layer3.5.relu3"));
}

#[test]
fn wrn22_8_counts() {
    let wrn = ArchSpec::wrn(22, 8).unwrap();
    assert_eq!(relus(&wrn, CIFAR, conv(true, false)), 1_359_872);
    assert_eq!(relus(&wrn, CIFAR, conv(true, true)), 1_392_640);
    assert_eq!(relus(&wrn, TINY, conv(true, false)), 5_439_488);
}

#[test]
fn vgg16_and_hrn_counts() {
    assert_eq!(relus(&ArchSpec::vgg16(), CIFAR, conv(true, false)), 276_480);
    let hrn = ArchSpec::hrn(5, 5, 3, 16).unwrap();
    assert_eq!(relus(&hrn, CIFAR, conv(true, false)), 343_040);
}

#[test]
fn resnet18_flops_and_params() {
    let net = ArchSpec::resnet18().build(CIFAR, 10, Init::Zeros).unwrap();
    let c = count(&net, Convention::default());
    // Conv/FC MACs by hand: stem 1,769,472; layer1 4 x 37,748,736; layers 2-4
    // 134,217,728 each (shortcut included); FC 5,120. Parameters: the
    // well-known 11,173,962 of CIFAR ResNet-18 (BN gamma/beta included).
    assert_eq!(c.flops, 555_422_720);
    assert_eq!(c.params, 11_173_962);
    assert_eq!(c.sites.len(), 17);
    assert_eq!(
        c.sites.iter().map(|s| s.flops).sum::<u64>() + c.head_flops,
        c.flops
    );
}

#[test]
fn masks_reduce_counts() {
    let mut net = ArchSpec::resnet18().build(CIFAR, 10, Init::Zeros).unwrap();
    let site = net.site_mut("layer2.1.relu1").unwrap();
    let n = site.mask.len() as u64;
    for m in site.mask.iter_mut().step_by(2) {
        *m = 0;
    }
    assert_eq!(relu_count(&net, Convention::default()), 557_056 - n / 2);
}

/// Every row of the table in docs/MODELS.md ("Asserted exactly"), MACs and
/// parameters included.
#[test]
fn documented_table_rows() {
    let row = |spec: &ArchSpec, input: FeatureShape, classes: usize| {
        let net = spec.build(input, classes, Init::Zeros).unwrap();
        let c = count(&net, Convention::default());
        (c.relus, c.flops, c.params)
    };
    let r18 = ArchSpec::resnet18();
    assert_eq!(row(&r18, CIFAR, 100), (557_056, 555_468_800, 11_220_132));
    assert_eq!(row(&r18, CIFAR, 10), (557_056, 555_422_720, 11_173_962));
    assert_eq!(row(&r18, TINY, 200), (2_228_224, 2_221_772_800, 11_271_432));
    let wrn = ArchSpec::wrn(22, 8).unwrap();
    assert_eq!(row(&wrn, CIFAR, 10).0, 1_359_872);
    assert_eq!(row(&wrn, CIFAR, 10).1, 2_454_115_328);
    assert_eq!(row(&wrn, CIFAR, 100).1, 2_454_161_408);
    assert_eq!(row(&wrn, TINY, 200).0, 5_439_488);
    let vgg = ArchSpec::vgg16();
    assert_eq!(row(&vgg, CIFAR, 100).0, 276_480);
    assert_eq!(row(&vgg, CIFAR, 100).1, 313_247_744);
    let hrn = ArchSpec::hrn(5, 5, 3, 16).unwrap();
    assert_eq!(row(&hrn, CIFAR, 100), (343_040, 1_053_353_152, 48_652_308));
}
