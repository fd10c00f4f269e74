//! Pure text rules for what the bot writes to GitHub: fitting a sticky comment into GitHub's
//! 65,536-character limit and a status description into 140 characters.

use std::borrow::Cow;

/// GitHub's maximum issue/PR comment body length, in characters (Unicode scalar values).
pub const MAX_COMMENT_CHARS: usize = 65_536;

/// Maximum commit status description the bot sends, in characters (GitHub rejects long ones;
/// Argo CD truncates at 140 too).
pub const MAX_STATUS_DESCRIPTION_CHARS: usize = 140;

fn note(omitted: usize) -> String {
    format!("\n\n> **Note:** this comment was truncated ({omitted} characters omitted).\n")
}

/// Returns `body` as it must be posted for a sticky comment identified by `marker`.
///
/// - The marker (a hidden HTML comment such as `<!-- tkgops:plan -->`) is prepended on its own
///   line when `body` does not contain it, so the comment can be found again.
/// - When the result exceeds [`MAX_COMMENT_CHARS`], the body is cut (at a line break when one
///   is within the last 2,000 characters), an unbalanced Markdown code fence is closed, the
///   marker is re-appended if it was cut off, and the visible note
///   `"\n\n> **Note:** this comment was truncated (N characters omitted).\n"` is appended.
///   The result is then at most [`MAX_COMMENT_CHARS`] characters (for markers shorter than
///   about 60,000 characters).
pub fn fit_comment(body: &str, marker: &str) -> String {
    let body: Cow<'_, str> = if marker.is_empty() || body.contains(marker) {
        Cow::Borrowed(body)
    } else {
        Cow::Owned(format!("{marker}\n{body}"))
    };
    let total = body.chars().count();
    if total <= MAX_COMMENT_CHARS {
        return body.into_owned();
    }
    let reserve = note(total).chars().count() + marker.chars().count() + 1 + "\n```".len();
    let keep = MAX_COMMENT_CHARS.saturating_sub(reserve);
    let cut = body
        .char_indices()
        .nth(keep)
        .map(|(i, _)| i)
        .unwrap_or(body.len());
    let mut out = body[..cut].to_string();
    if let Some(pos) = out.rfind('\n') {
        if out.len() - pos < 2000 {
            out.truncate(pos);
        }
    }
    let omitted = total - out.chars().count();
    if out.matches("```").count() % 2 == 1 {
        out.push_str("\n```");
    }
    if !marker.is_empty() && !out.contains(marker) {
        out.push('\n');
        out.push_str(marker);
    }
    out.push_str(&note(omitted));
    out
}

/// Cuts a commit status description to [`MAX_STATUS_DESCRIPTION_CHARS`] characters, ending
/// with `…` when something was cut.
pub fn fit_status_description(description: &str) -> String {
    if description.chars().count() <= MAX_STATUS_DESCRIPTION_CHARS {
        return description.to_string();
    }
    let mut s: String = description
        .chars()
        .take(MAX_STATUS_DESCRIPTION_CHARS - 1)
        .collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_bodies_get_the_marker_only() {
        assert_eq!(fit_comment("hello", "<!-- m -->"), "<!-- m -->\nhello");
        assert_eq!(
            fit_comment("<!-- m -->\nhello", "<!-- m -->"),
            "<!-- m -->\nhello"
        );
    }

    #[test]
    fn long_bodies_are_cut_with_a_note() {
        let body = format!("<!-- m -->\n```\n{}", "line of text\n".repeat(10_000));
        let out = fit_comment(&body, "<!-- m -->");
        assert!(out.chars().count() <= MAX_COMMENT_CHARS);
        assert!(out.starts_with("<!-- m -->"));
        assert!(out.contains("characters omitted"));
        assert_eq!(out.matches("```").count() % 2, 0);
    }

    #[test]
    fn marker_at_the_end_survives() {
        let body = format!("{}\n<!-- m -->", "é".repeat(70_000));
        let out = fit_comment(&body, "<!-- m -->");
        assert!(out.chars().count() <= MAX_COMMENT_CHARS);
        assert!(out.contains("<!-- m -->"));
    }

    #[test]
    fn descriptions_are_cut() {
        let d = fit_status_description(&"x".repeat(200));
        assert_eq!(d.chars().count(), 140);
        assert!(d.ends_with('…'));
    }
}
