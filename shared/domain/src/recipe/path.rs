//! Paths into a recipe (`policy.stages[0].ptq.calibration.samples`) and the line they are
//! on, so every validation error names the key and the line.

use super::RecipeError;

/// Where a stage sits in the recipe, for errors that name its keys and their lines.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub(crate) index: usize,
    pub(crate) kind: &'static str,
    pub(crate) source: Option<&'a str>,
}

impl At<'_> {
    /// An error at `policy.stages[<index>].<kind>.<keys…>`.
    pub fn invalid(&self, keys: &[&str], message: impl Into<String>) -> RecipeError {
        let mut path = vec![Key::Field("policy"), Key::Field("stages"), Key::Index(self.index), Key::Field(self.kind)];
        path.extend(keys.iter().map(|k| Key::Field(k)));
        RecipeError::Invalid { path: render(&path), line: self.source.and_then(|s| line_of(s, &path)), message: message.into() }
    }
}

/// One step of a path into the recipe.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Key<'a> {
    Field(&'a str),
    Index(usize),
}

pub(crate) fn render(path: &[Key<'_>]) -> String {
    let mut s = String::new();
    for k in path {
        match k {
            Key::Field(f) if s.is_empty() => s.push_str(f),
            Key::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Key::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Best-effort line (1-based) of `path` in block- or flow-style YAML: walks forward through
/// the text, finding each key (or the n-th list item) after the previous one. Falls back to
/// the deepest step found.
pub(crate) fn line_of(source: &str, path: &[Key<'_>]) -> Option<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let mut at = 0usize;
    let mut found = None;
    for key in path {
        match key {
            Key::Field(name) => {
                let needle = format!("{name}:");
                let hit = (at..lines.len()).find(|&l| {
                    let t = lines[l].trim_start().trim_start_matches("- ").trim_start();
                    t.starts_with(&needle) || lines[l].contains(&format!("{{{needle}")) || lines[l].contains(&format!(" {needle}"))
                })?;
                at = hit;
                found = Some(hit + 1);
            }
            Key::Index(n) => {
                let items: Vec<usize> = (at + 1..lines.len()).filter(|&l| lines[l].trim_start().starts_with("- ")).collect();
                let indent = items.first().map(|&l| lines[l].len() - lines[l].trim_start().len())?;
                let hit = items.into_iter().filter(|&l| lines[l].len() - lines[l].trim_start().len() == indent).nth(*n)?;
                at = hit;
                found = Some(hit + 1);
            }
        }
    }
    found
}
