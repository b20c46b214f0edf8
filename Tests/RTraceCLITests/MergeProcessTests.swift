import Foundation
import RTraceTestSupport
import Testing

/// JSON object of a process's standard output, without the keys given.
func jsonObject(_ r: ProcessResult, dropping keys: [String] = []) throws -> NSDictionary {
    var o = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any], "not JSON: \(r.text.prefix(200)) \(r.stderr)")
    for k in keys { o[k] = nil }
    return o as NSDictionary
}

@Suite("rtrace diff --partial and rtrace merge: the shell way to split a comparison", .enabled(if: binaryTestsEnabled))
struct MergeProcessTests {
    let a = "\(realSample)/rollout.rtrace", b = "\(realSample)/train_mixed.rtrace"

    @Test("partials of uid shards made by xargs -P merge to byte-identical JSON, CSV and table")
    func xargsThenMerge() throws {
        let d = tempPath("merge-\(UUID().uuidString)")
        let r = try shell("""
            set -e; mkdir -p \(d)
            seq 0 4 | xargs -P 3 -I{} sh -c '$RT diff \(a) \(b) --partial --uid-shard {}/5 --top 4 --buckets 3 --is-threshold 2 --is-threshold 1.05 > \(d)/p{}.json'
            $RT merge \(d)/p3.json \(d)/p0.json \(d)/p4.json \(d)/p1.json \(d)/p2.json --json > \(d)/merged.json
            $RT diff \(a) \(b) --json --top 4 --buckets 3 --is-threshold 2 --is-threshold 1.05 > \(d)/single.json
            cmp \(d)/merged.json \(d)/single.json
            grep -q '"rollout_is_token"' \(d)/merged.json
            $RT merge \(d)/p[0-4].json --csv --csv-table policy > \(d)/merged-policy.csv
            $RT diff \(a) \(b) --csv --csv-table policy --top 4 --buckets 3 --is-threshold 2 --is-threshold 1.05 | cmp - \(d)/merged-policy.csv
            $RT merge \(d)/p[0-4].json --csv > \(d)/merged.csv; $RT diff \(a) \(b) --csv --top 4 --buckets 3 --is-threshold 2 --is-threshold 1.05 > \(d)/single.csv
            cmp \(d)/merged.csv \(d)/single.csv
            $RT merge \(d)/p[0-4].json > \(d)/merged.txt; $RT diff \(a) \(b) --top 4 --buckets 3 --is-threshold 2 --is-threshold 1.05 > \(d)/single.txt
            cmp \(d)/merged.txt \(d)/single.txt
            $RT merge \(d)/p0.json \(d)/p1.json --partial > \(d)/p01.json
            $RT merge \(d)/p01.json \(d)/p2.json \(d)/p3.json \(d)/p4.json --json | cmp - \(d)/single.json
            grep -q '"format" : "rtrace-diff-partial"' \(d)/p0.json
            """)
        #expect(r.status == 0, "\(r.text)\(r.stderr)")
        // --fail-above checks the merged report as diff checks its own.
        let fail = try shell("$RT merge \(d)/p[0-4].json --fail-above flip_rate=0.0001")
        #expect(fail.status == 1 && fail.stderr.contains("flip_rate"), "\(fail.stderr)")
        let pass = try shell("$RT merge \(d)/p[0-4].json --json --fail-above flip_rate=0.9")
        #expect(pass.status == 0)
    }

    @Test("rtrace split co-partitions both sides; diff --partial per part and merge give the single run's report")
    func splitThenDiffParts() throws {
        let d = tempPath("split-\(UUID().uuidString)")
        let r = try shell("""
            set -e; mkdir -p \(d)
            $RT split \(a) --uid-shards 4 --prefix \(d)/a > \(d)/a.json
            $RT split \(b) --uid-shards 4 --prefix \(d)/b --raw --threads 1 > \(d)/b.json
            grep -q '"records":12' \(d)/a.json
            for i in 0 1 2 3; do $RT diff \(d)/a.$i.rtrace \(d)/b.$i.rtrace --partial > \(d)/p$i.json; done
            $RT merge \(d)/p*.json --json | grep -v '"a"\\|"b"\\|rtrace"' > \(d)/merged.json
            $RT diff \(a) \(b) --json | grep -v '"a"\\|"b"\\|rtrace"' > \(d)/single.json
            cmp \(d)/merged.json \(d)/single.json
            """)
        #expect(r.status == 0, "\(r.text)\(r.stderr)")
        let bad = try shell("$RT split \(a) --uid-shards 0 --prefix \(d)/z")
        #expect(bad.status != 0 && bad.stderr.contains("--uid-shards must be at least 1"), "\(bad.stderr)")
    }

    @Test("--threads 1 and --threads 3 print what the default prints (diff, diff --partial, stats); --threads 0 is refused")
    func threads() throws {
        for args in ["diff \(a) \(b) --json", "diff \(a) \(b) --partial --uid-shard 1/3", "stats \(a) \(b) --json --capacity-factor 1.25"] {
            let base = try shell("$RT \(args)")
            #expect(base.status == 0, "\(args): \(base.stderr)")
            for t in [1, 3] {
                let r = try shell("$RT \(args) --threads \(t)")
                #expect(r.status == 0 && r.stdout == base.stdout, "\(args) --threads \(t): \(r.stderr)")
            }
            let zero = try shell("$RT \(args) --threads 0")
            #expect(zero.status != 0 && zero.stderr.contains("--threads must be at least 1"), "\(zero.stderr)")
        }
    }

    @Test("B through a pipe (no index: the streaming join) and with every waiting record spilled: the same report")
    func pipeAndSpill() throws {
        let d = tempPath("spill-\(UUID().uuidString)")
        let single = try shell("$RT diff \(a) \(b) --json")
        let piped = try shell("cat \(b) | $RT diff \(a) - --json --join-stats")
        #expect(piped.status == 0 && piped.stderr.contains("two streams"), "\(piped.stderr)")
        #expect(try jsonObject(piped, dropping: ["b"]) == jsonObject(single, dropping: ["b"]))
        let spilled = try shell("mkdir -p \(d) && $RT diff \(a) \(b) --json --join-memory 0 --spill-dir \(d) --join-stats")
        #expect(spilled.status == 0 && spilled.stderr.contains("planned"), "\(spilled.stderr)")
        #expect(!spilled.stderr.contains(" 0 spilled"), "\(spilled.stderr)")
        #expect(spilled.stdout == single.stdout)
        // The spill file is unlinked at once: nothing is left in the directory.
        #expect(try FileManager.default.contentsOfDirectory(atPath: d).isEmpty)
        let noDir = try shell("$RT diff \(a) \(b) --json --join-memory 0 --spill-dir /nonexistent/spill")
        #expect(noDir.status == 1 && noDir.stderr.contains("--spill-dir"), "\(noDir.stderr)")
    }

    @Test("merge refuses what is not the parts of one comparison, naming the file and why")
    func refusals() throws {
        let d = tempPath("refuse-\(UUID().uuidString)")
        _ = try shell("mkdir -p \(d); for i in 0 1 2; do $RT diff \(a) \(b) --partial --uid-shard $i/3 > \(d)/p$i.json; done; echo '{\"x\": 1}' > \(d)/junk.json")
        let twice = try shell("$RT merge \(d)/p0.json \(d)/p1.json \(d)/p1.json \(d)/p2.json")
        #expect(twice.status == 1 && twice.stderr.contains("uid shard 1/3") && twice.stderr.contains("p1.json"), "\(twice.stderr)")
        let missing = try shell("$RT merge \(d)/p0.json \(d)/p2.json --json")
        #expect(missing.status == 1 && missing.stderr.contains("uid shards 1 of 3"), "\(missing.stderr)")
        let partialOK = try shell("$RT merge \(d)/p0.json \(d)/p2.json --partial")
        #expect(partialOK.status == 0)
        let junk = try shell("$RT merge \(d)/p0.json \(d)/junk.json")
        #expect(junk.status == 1 && junk.stderr.contains("junk.json") && junk.stderr.contains("format"), "\(junk.stderr)")
        let usage = try shell("$RT diff \(a) \(b) --uid-shard 1/2")
        #expect(usage.status == 64, "\(usage.stderr)")
        let both = try shell("$RT diff \(a) \(b) --partial --json")
        #expect(both.status == 64, "\(both.stderr)")
        let otherC = try shell("$RT diff \(a) \(b) --partial --uid-shard 1/3 --is-threshold 3 > \(d)/c3.json && $RT merge \(d)/p0.json \(d)/c3.json \(d)/p2.json")
        #expect(otherC.status == 1 && otherC.stderr.contains("--is-threshold"), "\(otherC.stderr)")
        let badShard = try shell("$RT diff \(a) \(b) --partial --uid-shard 3/3")
        #expect(badShard.status == 1 && badShard.stderr.contains("3/3"), "\(badShard.stderr)")
    }

    @Test("merge of stats results equals stats --merge")
    func stats() throws {
        let d = tempPath("stats-\(UUID().uuidString)")
        let r = try shell("""
            set -e; mkdir -p \(d)
            $RT stats \(a) --json > \(d)/s0.json; $RT stats \(b) --json > \(d)/s1.json
            $RT merge \(d)/s0.json \(d)/s1.json --json --ep 4 > \(d)/m.json
            $RT stats --merge \(d)/s0.json \(d)/s1.json --json --ep 4 | cmp - \(d)/m.json
            """)
        #expect(r.status == 0, "\(r.stderr)")
        let mixed = try shell("$RT diff \(a) \(b) --partial > \(d)/p.json; $RT merge \(d)/s0.json \(d)/p.json")
        #expect(mixed.status == 1 && mixed.stderr.contains("mixes"), "\(mixed.stderr)")
    }
}
