import Foundation
import RTrace

/// The per-step metrics of one `rtrace replay-train` output directory (`DIR/metrics.jsonl`).
public struct RunMetrics: Sendable {
    /// The directory.
    public var directory: String
    /// The routing-replay mode (`none`, `r2`, `r3`): the metrics' `mode` key, else read from the directory
    /// name (`r3-seed1` → `r3`), else the directory name itself.
    public var mode: String
    /// One entry per line: the numeric keys of that step (null and non-numeric values are left out).
    public var steps: [[String: Double]]

    /// Creates a run from parsed rows.
    public init(directory: String, mode: String, steps: [[String: Double]]) {
        self.directory = directory; self.mode = mode; self.steps = steps
    }

    /// The values of `key` against `step` (the line number when a row has no `step`), skipping rows without it.
    public func series(_ key: String) -> [(x: Double, y: Double)] {
        steps.enumerated().compactMap { i, row in row[key].map { (row["step"] ?? Double(i), $0) } }
    }

    /// Reads `DIR/metrics.jsonl`. Errors name the file and the line.
    public static func load(directory: String) throws -> RunMetrics {
        let path = (directory as NSString).appendingPathComponent("metrics.jsonl")
        guard let data = FileManager.default.contents(atPath: path) else {
            var isDir: ObjCBool = false
            let what = FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) && isDir.boolValue
                ? "has no metrics.jsonl (is it a replay-train output directory?)" : "does not exist"
            throw TraceError(.invalidInput, "run directory \(directory) \(what)", file: path)
        }
        var steps: [[String: Double]] = []
        var mode: String? = nil
        for (i, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty { continue }
            guard let obj = (try? JSONSerialization.jsonObject(with: Data(t.utf8))) as? [String: Any] else {
                throw TraceError(.invalidInput, "line \(i + 1): not a JSON object: \(t.prefix(60))", file: path)
            }
            var row: [String: Double] = [:]
            for (k, v) in obj {
                if let n = v as? NSNumber { row[k] = n.doubleValue }
                if k == "mode", let s = v as? String { mode = s }
            }
            steps.append(row)
        }
        if steps.isEmpty { throw TraceError(.invalidInput, "no metrics lines (empty file)", file: path) }
        return RunMetrics(directory: directory, mode: mode ?? modeFromName(directory), steps: steps)
    }

    /// `none`, `r2` or `r3` when the directory's name starts with or contains one of them as a word, else the name.
    static func modeFromName(_ dir: String) -> String {
        var name = (dir as NSString).lastPathComponent
        if name.isEmpty || name == "." { name = ((dir as NSString).standardizingPath as NSString).lastPathComponent }
        let words = name.lowercased().split(whereSeparator: { !$0.isLetter && !$0.isNumber })
        for w in words where ["none", "r2", "r3"].contains(String(w)) { return String(w) }
        return name
    }
}
