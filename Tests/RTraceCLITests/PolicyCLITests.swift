import Foundation
import RTraceTestSupport
import Testing

@Suite("rtrace diff: the policy options")
struct PolicyCLITests {
    let pair = "\(realSample)/rollout.rtrace \(realSample)/train_mixed.rtrace"

    @Test("--is-threshold is repeatable and orders the JSON's thresholds; the default is 2")
    func thresholds() throws {
        let r = try shell("$RT diff \(pair) --json --is-threshold 1.05 --is-threshold 2")
        #expect(r.status == 0, "\(r.stderr)")
        let j = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
        let p = try #require(j["policy"] as? [String: Any])
        let th = try #require(p["thresholds"] as? [[String: Any]])
        #expect(th.map { ($0["threshold"] as? NSNumber)?.doubleValue } == [1.05, 2])
        let d = try shell("$RT diff \(pair) --json")
        let pd = try #require((try JSONSerialization.jsonObject(with: d.stdout) as? [String: Any])?["policy"] as? [String: Any])
        #expect((pd["thresholds"] as? [[String: Any]])?.map { ($0["threshold"] as? NSNumber)?.doubleValue } == [2])
        for key in ["chi2_token", "chi2_seq", "training_ppl", "ppl_ratio", "log_ppl_diff_max", "routing"] { #expect(pd[key] != nil, "\(key)") }
    }

    @Test("bad thresholds and --csv-table without --csv exit 64")
    func badArguments() throws {
        for args in ["--is-threshold 0", "--is-threshold -2", "--is-threshold inf", "--is-threshold x", "--csv-table policy"] {
            let r = try shell("$RT diff \(pair) \(args)")
            #expect(r.status == 64, "\(args): \(r.status) \(r.stderr)")
        }
    }

    @Test("--csv --csv-table policy: one row for all tokens, unflipped, flipped and each flipped-layer bucket")
    func csv() throws {
        let r = try shell("$RT diff \(pair) --csv --csv-table policy --is-threshold 1.05")
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.text.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        #expect(lines[0].prefix(4) == ["group", "from", "to", "tokens"] && lines[0].count == 12 + 5)
        #expect(lines.dropFirst().map { $0[0] } == ["all", "unflipped", "flipped"] + Array(repeating: "flipped_layers", count: 5))
        #expect(lines.allSatisfy { $0.count == lines[0].count })
        let tokens = lines.dropFirst(4).map { Int($0[3])! }
        #expect(tokens.reduce(0, +) == Int(lines[1][3])!)
        // --csv-table layers is the per-layer table.
        let n = try shell("$RT diff \(realSample)/rollout.rtrace \(realSample)/train_mixed.rtrace --csv --csv-table layers")
        #expect(n.status == 0 && n.text.hasPrefix("layer,moe_index"))
    }

    @Test("--fail-above reaches the routing groups")
    func failAbove() throws {
        #expect(try shell("$RT diff \(pair) --fail-above policy.routing.flipped.k3=1e-9").status == 1)
        #expect(try shell("$RT diff \(pair) --fail-above policy.routing.flipped.k3=1").status == 0)
        #expect(try shell("$RT diff \(pair) --fail-above policy.chi2_seq=1").status == 0)
    }
}
