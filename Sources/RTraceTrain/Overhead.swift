import Foundation

/// Step times of `none` and `r3` measured in one process: the cost of routing replay.
public struct ReplayOverhead: Sendable {
    /// Per repetition, the whole step (rollout + replay read + old-policy pass + updates), seconds.
    public var none: [Double] = [], r3: [Double] = []
    /// Per repetition, the process CPU time of the whole step (all threads), seconds: robust to other load on the machine.
    public var noneCPU: [Double] = [], r3CPU: [Double] = []
    /// Per repetition, r3's read of the rollout trace, and the rollout-trace write (both modes write it; the none run's).
    public var read: [Double] = [], write: [Double] = []
    /// Per repetition, CPU time of the training forward over the whole rollout batch without and with the replayed routing.
    public var fwdFree: [Double] = [], fwdReplay: [Double] = []

    static func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        return s.isEmpty ? .nan : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
    }

    /// Median over repetitions of r3 / none − 1 (each repetition's pair ran back to back).
    public var medianOverhead: Double { Self.median(zip(r3, none).map { $0 / $1 - 1 }) }
    /// The same on process CPU time.
    public var medianOverheadCPU: Double { Self.median(zip(r3CPU, noneCPU).map { $0 / $1 - 1 }) }

    /// Mean and standard error of r3 / none − 1 over the pairs, on CPU time.
    public var meanOverheadCPU: (mean: Double, sem: Double) {
        let d = zip(r3CPU, noneCPU).map { $0 / $1 - 1 }
        guard d.count > 1 else { return (d.first ?? .nan, .nan) }
        let m = d.reduce(0, +) / Double(d.count)
        let v = d.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(d.count - 1)
        return (m, (v / Double(d.count)).squareRoot())
    }

    /// A markdown summary.
    public var markdown: String {
        let mn = Self.median(none), mr = Self.median(r3), cn = Self.median(noneCPU), cr = Self.median(r3CPU)
        var out = "| | none | r3 | r3 vs none |\n|---|---|---|---|\n"
        out += String(format: "| CPU time per step (ms, median) | %.1f | %.1f | %+.2f %% (median per-pair ratio) |\n", 1000 * cn, 1000 * cr, 100 * medianOverheadCPU)
        out += String(format: "| CPU time per step (ms, min) | %.1f | %.1f | %+.2f %% |\n", 1000 * (noneCPU.min() ?? .nan), 1000 * (r3CPU.min() ?? .nan),
                      100 * ((r3CPU.min() ?? .nan) / (noneCPU.min() ?? .nan) - 1))
        out += String(format: "| wall time per step (ms, median) | %.1f | %.1f | %+.2f %% (median per-pair ratio) |\n", 1000 * mn, 1000 * mr, 100 * medianOverhead)
        out += String(format: "| wall time per step (ms, min) | %.1f | %.1f | %+.2f %% |\n", 1000 * (none.min() ?? .nan), 1000 * (r3.min() ?? .nan),
                      100 * ((r3.min() ?? .nan) / (none.min() ?? .nan) - 1))
        out += String(format: "| rollout-trace read, wall (ms, median) | — | %.2f | %.2f %% of a none step |\n", 1000 * Self.median(read), 100 * Self.median(read) / mn)
        out += String(format: "| rollout-trace write, wall (ms, median; both modes write it) | %.2f | — | %.2f %% of a none step |\n",
                      1000 * Self.median(write), 100 * Self.median(write) / mn)
        out += String(format: "| training forward over the batch, CPU (ms, median): router's choice vs replayed | %.1f | %.1f | %+.2f %% (median per-pair ratio) |\n",
                      1000 * Self.median(fwdFree), 1000 * Self.median(fwdReplay), 100 * Self.median(zip(fwdReplay, fwdFree).map { $0 / $1 - 1 }))
        let ms = meanOverheadCPU
        out += String(format: "\nr3 vs none over %d back-to-back pairs: %+.2f %% CPU time, %+.2f %% wall time (median per-pair ratios); "
                      + "mean per-pair CPU ratio %+.2f ± %.2f %% (± standard error).\n",
                      none.count, 100 * medianOverheadCPU, 100 * medianOverhead, 100 * ms.mean, 100 * ms.sem)
        return out
    }
}

/// Process CPU time (all threads), seconds.
func processCPUTime() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// Runs step 0 of `cfg` (same seed) under none and under r3, `reps` times, alternating which goes first,
/// after one discarded warm-up pair. Both runs see the same rollout batch; only replay differs.
public func measureReplayOverhead(_ cfg: TrainConfig, reps: Int, progress: ((Int) -> Void)? = nil) throws -> ReplayOverhead {
    var res = ReplayOverhead()
    for rep in 0...reps {
        let order: [ReplayMode] = rep % 2 == 0 ? [.none, .r3] : [.r3, .none]
        for mode in order {
            var c = cfg
            c.mode = mode
            c.out = cfg.out + "/overhead-" + mode.rawValue
            let tr = Trainer(c)
            let c0 = processCPUTime()
            let met = try tr.runStep()
            let cpu = processCPUTime() - c0
            guard rep > 0 else { continue }
            let t = met.timeRollout + met.timeReplay + met.timeTrain
            if mode == .none {
                res.none.append(t); res.noneCPU.append(cpu); res.write.append(met.timeTraceWrite)
            } else {
                res.r3.append(t); res.r3CPU.append(cpu); res.read.append(met.timeReplay)
            }
        }
        if rep > 0 { progress?(rep) }
    }
    // The forward alone, same batch, with and without the rollout routing, alternating.
    var c = cfg
    c.mode = .r3
    c.out = cfg.out + "/overhead-fwd"
    try FileManager.default.createDirectory(atPath: c.out + "/traces", withIntermediateDirectories: true)
    let tr = Trainer(c)
    let samples = try tr.rollout(step: 0).samples
    for rep in 0...reps {
        for replay in rep % 2 == 0 ? [false, true] : [true, false] {
            let c0 = processCPUTime()
            for x in samples {
                _ = tr.model.forward(tokens: x.tokens, override: replay ? x.ids : nil, temperature: c.temperature, keep: true)
            }
            let t = processCPUTime() - c0
            if rep > 0 { if replay { res.fwdReplay.append(t) } else { res.fwdFree.append(t) } }
        }
    }
    return res
}
