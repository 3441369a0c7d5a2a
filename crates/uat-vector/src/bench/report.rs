//! The printed form of a [`BenchReport`].

use super::BenchReport;
use std::fmt;

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let data = match &o.data_file {
            Some(p) => format!("data={}", p.display()),
            None => format!("clusters={}", o.clusters),
        };
        writeln!(
            f,
            "uat-vector bench: n={} dim={} {data} queries={} k={} M={} ef_construction={}",
            o.n, o.dim, o.queries, o.k, o.hnsw.m, o.hnsw.ef_construction
        )?;
        if let Some(l) = self.load_average {
            writeln!(
                f,
                "load average at start: {l:.1} (QPS = wall clock; /CPU-s = per CPU-second of the searching thread)"
            )?;
        }
        writeln!(
            f,
            "brute force (exact scan, 1 thread): {:.0} QPS, {:.0} /CPU-s",
            self.brute_force_qps, self.brute_force_qps_cpu
        )?;
        writeln!(
            f,
            "build f32: {:.1} s on {} threads ({:.1} CPU-s in all)",
            self.build_seconds, o.build_threads, self.build_cpu_seconds
        )?;
        if let Some(s) = self.build_seconds_sq8 {
            writeln!(f, "build sq8: {s:.1} s on {} threads", o.build_threads)?;
        }
        writeln!(
            f,
            "{:>6} {:>5} {:>10} {:>9} {:>9} {:>9}",
            "index", "ef", "recall@k", "QPS", "/CPU-s", "vs brute"
        )?;
        for r in &self.sweeps {
            writeln!(
                f,
                "{:>6} {:>5} {:>10.4} {:>9.0} {:>9.0} {:>8.1}x",
                r.kind,
                r.ef,
                r.recall,
                r.qps,
                r.qps_cpu,
                r.qps_cpu / self.brute_force_qps_cpu.max(1e-9)
            )?;
        }
        for r in &self.filtered {
            writeln!(
                f,
                "{:>4} filtered {:>5.1}% (ef {}): plan {:<5} recall@k {:.4} QPS {:.0} /CPU-s {:.0}",
                r.kind,
                r.selectivity * 100.0,
                o.filtered_ef,
                r.plan,
                r.recall,
                r.qps,
                r.qps_cpu
            )?;
        }
        write!(
            f,
            "index memory (graph + walked vectors): f32 {:.1} MiB",
            self.index_bytes_f32 as f64 / 1048576.0
        )?;
        if let Some(b) = self.index_bytes_sq8 {
            write!(
                f,
                ", sq8 {:.1} MiB ({:.2}x of f32; f32 originals kept for rescoring)",
                b as f64 / 1048576.0,
                b as f64 / self.index_bytes_f32 as f64
            )?;
        }
        writeln!(f)?;
        if let Some((ef, multi, single)) = self.scaling {
            writeln!(
                f,
                "search scaling at ef {ef}: {multi:.0} QPS on {} threads vs {single:.0} on 1 ({:.2}x, wall clock, best of 3, measured back to back)",
                o.build_threads,
                multi / single.max(1e-9)
            )?;
        }
        writeln!(
            f,
            "snapshot: write {:.2} s, load {:.3} s; recall after reload {:.4}",
            self.snapshot_write_seconds, self.snapshot_load_seconds, self.reopened_recall
        )
    }
}
