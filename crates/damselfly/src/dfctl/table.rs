//! Plain-text tables: a header row, then left-aligned columns padded to their widest cell.

/// Renders `rows` under `header`.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Binary sizes as Dragonfly's dfctl prints them (`4.0 MiB`).
pub fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let text = render(&["ID", "SIZE"], &[vec!["abc".into(), "1".into()]]);
        assert_eq!(text, "ID   SIZE\nabc  1");
        assert_eq!(size(4 * 1024 * 1024), "4.0 MiB");
    }
}
