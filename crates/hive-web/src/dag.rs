//! A plan's DAG laid out in layers and drawn as SVG: a node's layer is the length of the
//! longest dependency path to it; within a layer nodes are ordered by the mean position of
//! their dependencies (one barycentre pass), which keeps most edges short and uncrossed.

use std::collections::HashMap;

use hive_client::ops::SubtaskResult;
use maud::{Markup, html};

use crate::view::{secs, status_color};

const NODE_W: f64 = 150.0;
const NODE_H: f64 = 34.0;
const GAP_X: f64 = 24.0;
const GAP_Y: f64 = 56.0;
const PAD: f64 = 16.0;

/// Where each node goes: `(layer, index in layer)` per subtask, in input order.
pub fn layout(nodes: &[(String, Vec<String>)]) -> Vec<(usize, usize)> {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    // Longest path from a root, by relaxation in rounds (a valid plan is acyclic, so
    // `nodes.len()` rounds suffice; a cycle would stop there instead of looping).
    let mut layer = vec![0usize; nodes.len()];
    for _ in 0..nodes.len() {
        let mut changed = false;
        for (i, (_, deps)) in nodes.iter().enumerate() {
            for d in deps.iter().filter_map(|d| index.get(d.as_str())) {
                if layer[i] <= layer[*d] {
                    layer[i] = layer[*d] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let depth = layer.iter().max().map_or(0, |m| m + 1);
    let mut position = vec![0usize; nodes.len()];
    for l in 0..depth {
        let mut members: Vec<(f64, usize)> = (0..nodes.len())
            .filter(|i| layer[*i] == l)
            .map(|i| {
                let parents: Vec<f64> = nodes[i]
                    .1
                    .iter()
                    .filter_map(|d| index.get(d.as_str()))
                    .map(|p| position[*p] as f64)
                    .collect();
                let key = if parents.is_empty() {
                    i as f64
                } else {
                    parents.iter().sum::<f64>() / parents.len() as f64
                };
                (key, i)
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (k, (_, i)) in members.into_iter().enumerate() {
            position[i] = k;
        }
    }
    layer.into_iter().zip(position).collect()
}

fn at(layer: usize, pos: usize) -> (f64, f64) {
    (
        PAD + pos as f64 * (NODE_W + GAP_X),
        PAD + layer as f64 * (NODE_H + GAP_Y),
    )
}

/// The SVG of a plan's subtasks: one `g.node` per subtask, filled by its status, carrying
/// its details as data attributes (the script shows them on hover or click).
pub fn svg(subtasks: &[SubtaskResult]) -> Markup {
    let nodes: Vec<(String, Vec<String>)> = subtasks
        .iter()
        .map(|s| (s.subtask_id.clone(), s.dependencies.clone()))
        .collect();
    let places = layout(&nodes);
    let index: HashMap<&str, usize> = subtasks
        .iter()
        .enumerate()
        .map(|(i, s)| (s.subtask_id.as_str(), i))
        .collect();
    let width =
        places.iter().map(|p| p.1 + 1).max().unwrap_or(1) as f64 * (NODE_W + GAP_X) + 2.0 * PAD;
    let height =
        places.iter().map(|p| p.0 + 1).max().unwrap_or(1) as f64 * (NODE_H + GAP_Y) + 2.0 * PAD;
    html! {
        svg class="dag" xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox={ "0 0 " (width) " " (height) } {
            @for (i, s) in subtasks.iter().enumerate() {
                @for d in s.dependencies.iter().filter_map(|d| index.get(d.as_str())) {
                    @let (x1, y1) = at(places[*d].0, places[*d].1);
                    @let (x2, y2) = at(places[i].0, places[i].1);
                    path class="edge" d={
                        "M" (x1 + NODE_W / 2.0) " " (y1 + NODE_H)
                        " C" (x1 + NODE_W / 2.0) " " (y1 + NODE_H + GAP_Y / 2.0)
                        " " (x2 + NODE_W / 2.0) " " (y2 - GAP_Y / 2.0)
                        " " (x2 + NODE_W / 2.0) " " (y2)
                    } {}
                }
            }
            @for (i, s) in subtasks.iter().enumerate() {
                @let (x, y) = at(places[i].0, places[i].1);
                g class="node" data-subtask=(s.subtask_id) data-status=(s.status.as_str())
                    data-task=(s.task_id) data-attempts=(s.attempts)
                    data-worker=[s.worker.as_ref().map(|w| w.0.as_str())]
                    data-duration=[s.duration_secs.map(secs)]
                    data-error=[s.error.as_deref()] {
                    title { (s.subtask_id) ": " (s.status.as_str()) }
                    rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6"
                        fill=(status_color(s.status)) {}
                    text x=(x + 8.0) y=(y + 21.0) {
                        (truncate(&s.subtask_id, 20))
                    }
                }
            }
        }
    }
}

fn truncate(s: &str, chars: usize) -> String {
    if s.chars().count() <= chars {
        s.to_owned()
    } else {
        s.chars().take(chars - 1).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::layout;

    fn n(id: &str, deps: &[&str]) -> (String, Vec<String>) {
        (id.into(), deps.iter().map(|d| (*d).to_owned()).collect())
    }

    #[test]
    fn layers_are_longest_paths_and_positions_are_distinct() {
        let nodes = vec![
            n("d", &["b", "c"]),
            n("a", &[]),
            n("b", &["a"]),
            n("c", &["a"]),
            n("e", &["a", "d"]),
        ];
        let p = layout(&nodes);
        let layers: Vec<usize> = p.iter().map(|x| x.0).collect();
        assert_eq!(layers, vec![2, 0, 1, 1, 3]);
        assert_ne!(p[2], p[3], "b and c share a layer, not a place");
    }

    #[test]
    fn a_cycle_or_unknown_dependency_still_terminates() {
        let p = layout(&[n("a", &["b"]), n("b", &["a"]), n("c", &["zzz"])]);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].0, 0, "an unknown dependency is ignored");
    }
}
