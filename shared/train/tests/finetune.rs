//! Fine-tuning recovers what a compression pass lost, and keeps what the pass made: on the
//! real ResNet-8 and its real training set (a seeded subset, so the test stays quick).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::PathBuf;

use tamp_data::Dataset;
use tamp_domain::recipe::{FineTune, ImportanceCriterion, LearningRate};
use tamp_engine::passes::prune as pr;
use tamp_engine::passes::sparsity::{self, Pattern};
use tamp_onnx::Model;
use tamp_train::finetune::{Task, fine_tune, top1, weights};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fmnist-resnet8")
}

fn load() -> (Model, Dataset, Dataset) {
    let d = dir();
    (Model::load(d.join("model.onnx")).unwrap(), Dataset::load(d.join("train.npz")).unwrap(), Dataset::load(d.join("eval.npz")).unwrap())
}

fn quick() -> FineTune {
    FineTune { steps: Some(80), batch_size: 64, lr: LearningRate::Value(2e-3), max_rows: Some(8192), seed: 3, ..FineTune::default() }
}

#[test]
fn fine_tuning_recovers_half_the_channels_removed() {
    let (model, train, eval) = load();
    let groups = pr::analyze(&model);
    let keep: BTreeMap<usize, Vec<usize>> =
        groups.iter().map(|g| (g.id, pr::keep_set(&pr::importance_by(&model, g, ImportanceCriterion::L1), g.channels / 2))).collect();
    let pruned = pr::prune(&model, &groups, &keep).unwrap();
    let rows: Vec<usize> = (0..2000).collect();
    let before = top1(&pruned, &eval, &rows, "logits").unwrap();
    let task = Task { output: "logits".into(), teacher: Some(&model), ..Task::default() };
    let (tuned, report) = fine_tune(&pruned, &task, &train, &quick(), &mut |_, _, _| {}).unwrap();
    let after = top1(&tuned, &eval, &rows, "logits").unwrap();
    assert_eq!(report.steps, 80);
    assert!(report.loss_end < report.loss_start, "{report:?}");
    assert!(after > before + 30.0 && after > 65.0, "top-1 {before:.1} → {after:.1} ({report:?})");
}

#[test]
fn pruned_zeros_stay_zero_and_two_of_four_stays_two_of_four() {
    let (model, train, eval) = load();
    let units = sparsity::units(&model, 256);
    let levels = vec![0.5; units.len()];
    let (sparse, _) = sparsity::sparsify(&model, &units, &levels, Pattern::NOfM { n: 2, m: 4 }, false).unwrap();
    let task = Task { output: "logits".into(), teacher: Some(&model), ..Task::default() };
    let cfg = FineTune { steps: Some(20), ..quick() };
    let (tuned, report) = fine_tune(&sparse, &task, &train, &cfg, &mut |_, _, _| {}).unwrap();
    assert!(report.masked_tensors >= units.len(), "{report:?}");
    let (w0, w1) = (weights(&sparse).unwrap(), weights(&tuned).unwrap());
    let mut moved = 0usize;
    for (name, before) in &w0 {
        let after = &w1[name];
        for (a, b) in before.iter().zip(after) {
            if *a == 0.0 {
                assert_eq!(*b, 0.0, "{name}: a pruned weight came back");
            } else if a != b {
                moved += 1;
            }
        }
    }
    assert!(moved > 1000, "training changed only {moved} weights");
    let rows: Vec<usize> = (0..1000).collect();
    assert!(top1(&tuned, &eval, &rows, "logits").unwrap() > 50.0);
}

#[test]
fn the_same_inputs_and_seed_give_the_same_bytes() {
    let (model, train, _) = load();
    let task = Task { output: "logits".into(), teacher: Some(&model), ..Task::default() };
    let cfg = FineTune { steps: Some(5), ..quick() };
    let (a, _) = fine_tune(&model, &task, &train, &cfg, &mut |_, _, _| {}).unwrap();
    let (b, _) = fine_tune(&model, &task, &train, &cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
    assert_ne!(a.to_bytes().unwrap(), model.to_bytes().unwrap());
}

/// `lr: auto`: successive halving over four rates on held-back training rows; every trial
/// is recorded, the second round trains the better half twice as long, and the chosen rate
/// is the survivor.
#[test]
fn learning_rate_auto_records_its_trials() {
    let (model, train, _) = load();
    let task = Task { output: "logits".into(), teacher: Some(&model), ..Task::default() };
    let cfg = FineTune { steps: Some(40), lr: LearningRate::Auto, max_rows: Some(2048), ..quick() };
    let (_, report) = fine_tune(&model, &task, &train, &cfg, &mut |_, _, _| {}).unwrap();
    let rounds: Vec<usize> = report.lr_trials.iter().map(|t| t.round).collect();
    assert_eq!(rounds, vec![0, 0, 0, 0, 1, 1], "{report:?}");
    assert!(report.lr_trials[4].steps == 2 * report.lr_trials[0].steps);
    let best = report.lr_trials[4..].iter().min_by(|a, b| a.validation_loss.total_cmp(&b.validation_loss)).unwrap();
    assert_eq!(report.lr, best.lr);
    assert_eq!(report.steps, 40);
    assert!(report.lr_trials.iter().all(|t| t.validation_loss.is_finite()));
}
