import Foundation

/// The bundled real Qwen3-MoE sample directory.
let samplesDir: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.appendingPathComponent("samples/qwen3moe-L6-E32-k4").path
}()

/// A sample trace by name (`rollout`, `train_mixed`, …).
func sample(_ name: String) -> String { samplesDir + "/" + name + ".rtrace" }

/// A fresh temporary directory.
func tempDir(_ tag: String = #function) -> String {
    let d = NSTemporaryDirectory() + "rtrace-report-\(tag.filter { $0.isLetter || $0.isNumber })-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

/// Writes a replay-train style metrics.jsonl with `steps` lines into DIR and returns DIR.
func writeRun(_ dir: String, steps: Int, k3: Double, flip: Double) -> String {
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    var s = ""
    for i in 0..<steps {
        let t = Double(i)
        s += "{\"step\":\(i),\"reward\":\(0.1 + 0.02 * t),\"k3\":\(k3 * (1 + 0.1 * t)),\"flip_rate_natural\":\(flip),\"flip_rate_applied\":\(dir.contains("r3") ? 0 : flip),\"grad_norm\":1.0}\n"
    }
    try! s.write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
    return dir
}

/// Every `<figure id="…">` id in an HTML page.
func figureIDs(_ html: String) -> [String] {
    var out: [String] = []
    var rest = html[...]
    while let r = rest.range(of: "<figure id=\"") {
        let tail = rest[r.upperBound...]
        guard let end = tail.firstIndex(of: "\"") else { break }
        out.append(String(tail[..<end]))
        rest = tail[end...]
    }
    return out
}
