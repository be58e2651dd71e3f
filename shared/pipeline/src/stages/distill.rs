//! Knowledge distillation: a student (fewer transformer layers, narrower channels, the model
//! earlier stages made, or the user's own) trained on `train.npz` to match a teacher (the
//! job's model, or another file). Two candidates: the student as made (the comparison row,
//! unless `untrained_candidate: false`) and the student distilled.

use std::collections::BTreeMap;

use tamp_domain::recipe::{DistillStage, Stage, Student};
use tamp_domain::results::Candidate;
use tamp_engine::EngineError;
use tamp_engine::passes::depthwise::Depthwise;
use tamp_engine::passes::{layers, prune as pr};
use tamp_onnx::Model;
use tamp_onnx::Pass;

use super::Technique;
use crate::{Context, Job, Result, TrainSpec, resolve_from_recipe};

/// Teacher → student training.
pub struct Distill;

impl Technique for Distill {
    type Settings = DistillStage;
    const NAME: &'static str = "distill";

    fn settings(stage: &Stage) -> Option<&DistillStage> {
        match stage {
            Stage::Distill(d) => Some(d),
            _ => None,
        }
    }

    fn candidates(&self, cx: &mut Context<'_, '_>, index: usize, d: &DistillStage, input: &Model) -> Result<Vec<Candidate>> {
        let teacher_file = load_teacher(cx.job, index, d)?;
        let teacher = teacher_file.as_ref().unwrap_or(cx.model);
        cx.obs.begin("make the student", 0);
        let (student, how) = make_student(cx.job, index, d, teacher, input)?;
        cx.obs.end(&format!("student: {how}"));
        let Some(ft) = cx.fine_tune.take() else {
            return Err(EngineError::Config(format!("stage {index} (`distill`) has no training settings")));
        };
        let mut out = Vec::new();
        let id = format!("s{index}-distill");
        let result = (|| {
            if d.untrained_candidate {
                out.push(cx.judge_as_is(&student, format!("{id}-untrained"), index, "distill")?);
            }
            let (trained, mut report) = cx.train_with(&student, &ft, &id, TrainSpec { teacher: teacher_file.as_ref(), ..TrainSpec::default() })?;
            report.metric_before = Some(cx.quick_score(&student)?);
            let mut c = cx.judge_as_is(&trained, id.clone(), index, "distill")?;
            c.training = Some(report);
            c.mode = "distilled".into();
            out.push(c);
            Ok(())
        })();
        cx.fine_tune = Some(ft);
        result.map(|()| out)
    }
}

fn load_model(job: &Job<'_>, index: usize, what: &str, path: &str) -> Result<Model> {
    let p = resolve_from_recipe(job.recipe_path, path);
    Model::load(&p).map_err(|e| EngineError::Config(format!("stage {index} (`distill`): the {what} {}: {e}", p.display())))
}

/// The teacher's file, when it is not the job's model.
fn load_teacher(job: &Job<'_>, index: usize, d: &DistillStage) -> Result<Option<Model>> {
    (d.teacher != "input").then(|| load_model(job, index, "teacher", &d.teacher)).transpose()
}

/// The student the stage trains, and how it was made; checked against the teacher.
fn make_student(job: &Job<'_>, index: usize, d: &DistillStage, teacher: &Model, input: &Model) -> Result<(Model, String)> {
    let (student, how) = match &d.student {
        Student::Input => (input.clone(), "the model the earlier stages made".to_owned()),
        Student::File(f) => (load_model(job, index, "student", f)?, format!("the user's {f}")),
        Student::Layers(choice) => {
            let found = layers::boundaries(input)?.len();
            let keep = match choice.keep_every {
                Some(k) => layers::every_kth(found, k),
                None => choice.keep.clone(),
            };
            let m = layers::drop_layers(input, &keep).map_err(|e| EngineError::Config(format!("stage {index} (`distill`) student.layers: {e}")))?;
            (m, format!("layers {keep:?} of the teacher's {found}"))
        }
        Student::Width(w) => narrowed(index, "width", teacher, input, *w, |_| true)?,
        Student::Bottleneck(w) => narrowed(index, "bottleneck", teacher, input, *w, |g| g.producers.len() == 1)?,
        Student::Depthwise(choice) => {
            let pass = Depthwise { layers: choice.layers.iter().cloned().collect() };
            let Some((m, convs)) = pass.apply(input)? else {
                return Err(EngineError::Config(format!(
                    "stage {index} (`distill`) student.depthwise: no k×k Conv with more than one input channel{}",
                    if choice.layers.is_empty() { String::new() } else { format!(" among {:?}", choice.layers) }
                )));
            };
            let worst = convs.iter().map(|c| c.error).fold(0.0, f64::max);
            (m, format!("{} Convs made depthwise-separable (worst relative approximation error {worst:.2})", convs.len()))
        }
    };
    pairing(teacher, &student).map_err(|e| EngineError::Config(format!("stage {index} (`distill`): {e}")))?;
    Ok((student, how))
}

/// The stage's input with `keep` of each chosen channel group's channels (the teacher's most
/// important ones): structured pruning as the student's initialisation.
fn narrowed(index: usize, key: &str, teacher: &Model, input: &Model, keep: f64, chosen: impl Fn(&pr::ChannelGroup) -> bool) -> Result<(Model, String)> {
    let groups: Vec<pr::ChannelGroup> = pr::analyze(input).into_iter().filter(|g| chosen(g)).collect();
    if groups.is_empty() {
        let what = if key == "bottleneck" { "block-internal channel group (one a single Conv or MatMul produces)" } else { "prunable channel group" };
        return Err(EngineError::Config(format!(
            "stage {index} (`distill`) student.{key}: the teacher has no {what}; use `student: {{layers: …}}` or `{{file: …}}`"
        )));
    }
    let kept: BTreeMap<usize, Vec<usize>> = groups
        .iter()
        .map(|g| {
            let remove = g.channels - ((g.channels as f64 * keep).round() as usize).clamp(1, g.channels);
            (g.id, pr::keep_set(&pr::importance(teacher, g), remove))
        })
        .collect();
    let n: usize = kept.values().map(Vec::len).sum();
    let total: usize = groups.iter().map(|g| g.channels).sum();
    Ok((pr::prune(input, &groups, &kept)?, format!("{n} of {total} channels in {} groups", groups.len())))
}

/// Before any compute: the first stage's student is made from the job's model and checked
/// against its teacher (files load, layers exist, inputs and outputs pair up). Later
/// stages' students depend on what earlier stages choose and are checked when they run.
pub(crate) fn preflight(job: &Job<'_>, model: &Model) -> Result<()> {
    let Some(Stage::Distill(d)) = job.recipe.policy.stages.first() else { return Ok(()) };
    let teacher_file = load_teacher(job, 0, d)?;
    let (student, _) = make_student(job, 0, d, teacher_file.as_ref().unwrap_or(model), model)?;
    tamp_train::graph::TrainGraph::new(&student, &tamp_train::graph::GraphOptions::default())
        .map_err(|e| EngineError::Config(format!("stage 0 (`distill`): the student cannot train: {e}")))?;
    Ok(())
}

/// The student must read the teacher's inputs and produce each of the teacher's outputs with
/// the same element type and rank (the trained output is compared value for value).
fn pairing(teacher: &Model, student: &Model) -> std::result::Result<(), String> {
    let names = |m: &Model, inputs: bool| -> Vec<String> {
        let g = m.graph();
        let inits: std::collections::HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        let list = if inputs { &g.input } else { &g.output };
        list.iter().filter_map(|v| v.name.clone()).filter(|n| !inits.contains(n.as_str())).collect()
    };
    let (ti, si) = (names(teacher, true), names(student, true));
    if let Some(x) = si.iter().find(|x| !ti.contains(x)) {
        return Err(format!("the student reads '{x}', which the teacher does not (teacher inputs: {ti:?})"));
    }
    let (to, so) = (names(teacher, false), names(student, false));
    if let Some(o) = to.iter().find(|o| !so.contains(o)) {
        return Err(format!("the student has no output '{o}' (its outputs: {so:?}); name its outputs as the teacher's"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use tamp_onnx::builder::{Attr, GraphBuilder};
    use tamp_onnx::tensor::to_array;

    use super::*;

    /// stem → [conv_a → Relu → conv_b] + stem → head: one residual stream (stem and conv_b
    /// write it) and one block-internal width (conv_a's output).
    fn residual_block() -> Model {
        let mut gb = GraphBuilder::new("block", 17);
        let x = gb.input_f32("x", &[None, Some(3), Some(8), Some(8)]);
        let w = |o: usize, i: usize, k: usize| ArrayD::from_shape_fn(IxDyn(&[o, i, k, k]), |d| ((d[0] * 7 + d[1] * 3 + d[2] + d[3]) as f32 * 0.37).sin());
        let pads = ("pads", Attr::Ints(vec![1, 1, 1, 1]));
        let ws = gb.init_f32("stem_w", w(8, 3, 3));
        let stem = gb.op("Conv", &[&x, &ws], std::slice::from_ref(&pads));
        let wa = gb.init_f32("a_w", w(8, 8, 3));
        let a = gb.op("Conv", &[&stem, &wa], std::slice::from_ref(&pads));
        let r = gb.op("Relu", &[&a], &[]);
        let wb = gb.init_f32("b_w", w(8, 8, 3));
        let b = gb.op("Conv", &[&r, &wb], &[pads]);
        let sum = gb.op("Add", &[&b, &stem], &[]);
        let wh = gb.init_f32("head_w", w(4, 8, 1));
        let y = gb.op("Conv", &[&sum, &wh], &[]);
        gb.output_f32(&y, &[None, Some(4), Some(8), Some(8)]);
        gb.build()
    }

    fn shape(m: &Model, name: &str) -> Vec<usize> {
        let t = m.graph().initializer.iter().find(|t| t.name.as_deref() == Some(name)).unwrap();
        to_array::<f32>(t).unwrap().shape().to_vec()
    }

    #[test]
    fn a_bottleneck_narrows_block_internal_widths_and_keeps_the_residual_stream() {
        let m = residual_block();
        let (s, how) = narrowed(0, "bottleneck", &m, &m, 0.5, |g| g.producers.len() == 1).unwrap();
        assert_eq!(shape(&s, "a_w"), [4, 8, 3, 3], "{how}");
        assert_eq!(shape(&s, "b_w"), [8, 4, 3, 3]);
        assert_eq!(shape(&s, "stem_w"), [8, 3, 3, 3], "the residual stream keeps its width");
        assert_eq!(how, "4 of 8 channels in 1 groups");
        // Width narrows the stream too.
        let (w, _) = narrowed(0, "width", &m, &m, 0.5, |_| true).unwrap();
        assert_eq!(shape(&w, "stem_w"), [4, 3, 3, 3]);
        // A model with no block-internal width is refused by name.
        let mut gb = GraphBuilder::new("add", 17);
        let x = gb.input_f32("x", &[None, Some(4)]);
        let y = gb.op("Add", &[&x, &x], &[]);
        gb.output_f32(&y, &[None, Some(4)]);
        let plain = gb.build();
        let e = narrowed(3, "bottleneck", &plain, &plain, 0.5, |g| g.producers.len() == 1).unwrap_err().to_string();
        assert!(e.contains("stage 3") && e.contains("student.bottleneck") && e.contains("block-internal"), "{e}");
    }
}
