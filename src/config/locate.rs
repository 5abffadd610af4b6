//! Maps field paths (`static_resources.listeners[0].name`) to the line that holds them in a
//! YAML or JSON bootstrap, so that conversion errors can name file, line and field.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

/// Every field path of `text` with its 1-based line (keys in snake_case, as the protos name
/// them). An unparsable document gives what was found before the error.
pub fn field_lines(text: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    while let Ok((event, mark)) = parser.next_token() {
        let line = mark.line();
        let is_node = matches!(
            event,
            Event::Scalar(..)
                | Event::MappingStart(..)
                | Event::SequenceStart(..)
                | Event::Alias(..)
        );
        let mut node_path = String::new();
        if is_node {
            match stack.last_mut() {
                None => {}
                Some(Frame::Map { path, key }) => match key.take() {
                    None => {
                        if let Event::Scalar(k, ..) = &event {
                            let k = snake_case(k);
                            let p = join(path, &k);
                            out.entry(p).or_insert(line);
                            *key = Some(k);
                        }
                        continue;
                    }
                    Some(k) => node_path = join(path, &k),
                },
                Some(Frame::Seq { path, index }) => {
                    node_path = format!("{path}[{index}]");
                    *index += 1;
                    out.entry(node_path.clone()).or_insert(line);
                }
            }
        }
        match event {
            Event::MappingStart(..) => stack.push(Frame::Map {
                path: node_path,
                key: None,
            }),
            Event::SequenceStart(..) => stack.push(Frame::Seq {
                path: node_path,
                index: 0,
            }),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            Event::StreamEnd => break,
            _ => {}
        }
    }
    out
}

/// The line of `path` in `text`, or of its nearest ancestor that is written there.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines = field_lines(text);
    let mut p = path;
    loop {
        if let Some(&l) = lines.get(p) {
            return Some(l);
        }
        let cut = p.rfind(['.', '['])?;
        p = &p[..cut];
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn snake_case(k: &str) -> String {
    let mut out = String::with_capacity(k.len() + 4);
    for c in k.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_fields_in_yaml_and_json() {
        let yaml = "static_resources:\n  clusters:\n  - name: a\n    lbPolicy: MAGLEV\n  - {name: b, type: STATIC}\n";
        assert_eq!(
            line_of(yaml, "static_resources.clusters[0].lb_policy"),
            Some(4)
        );
        assert_eq!(line_of(yaml, "static_resources.clusters[1].type"), Some(5));
        // A path not written in the file falls back to its nearest ancestor.
        assert_eq!(
            line_of(yaml, "static_resources.clusters[0].connect_timeout"),
            Some(3)
        );
        let json = "{\n \"static_resources\": {\n  \"listeners\": [\n   {\"name\": \"l\",\n    \"address\": {}}]}}";
        assert_eq!(
            line_of(json, "static_resources.listeners[0].address"),
            Some(5)
        );
    }
}
