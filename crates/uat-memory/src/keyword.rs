//! Query text to full-text search terms, the same way for both databases.

/// Most terms taken from one query.
pub const MAX_TERMS: usize = 32;

/// Words too common to say anything about a memory.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "did", "do", "does", "for", "from",
    "had", "has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it", "its",
    "me", "my", "no", "not", "of", "on", "or", "our", "she", "so", "that", "the", "their", "them",
    "then", "there", "they", "this", "to", "was", "we", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "you", "your",
];

/// Lower-cased alphanumeric words of `query`, without stopwords or repeats.
/// A memory matches keyword search when it contains any of them.
pub fn terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in query.split(|c: char| !c.is_alphanumeric()) {
        if w.is_empty() {
            continue;
        }
        let w = w.to_lowercase();
        if STOPWORDS.contains(&w.as_str()) || out.contains(&w) {
            continue;
        }
        out.push(w);
        if out.len() == MAX_TERMS {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::terms;

    #[test]
    fn splits_lowercases_and_drops_stopwords() {
        assert_eq!(
            terms("Where is order ZX-48213?"),
            vec!["order", "zx", "48213"]
        );
        assert_eq!(terms("the THE a"), Vec::<String>::new());
        assert_eq!(terms("\"quoted\" 'x' *"), vec!["quoted", "x"]);
    }
}
