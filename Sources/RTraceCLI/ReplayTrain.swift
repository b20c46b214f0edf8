import ArgumentParser
import Foundation
import RTrace
import RTraceTrain

/// `rtrace replay-train`: the reference MoE RL trainer with routing replay.
struct ReplayTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay-train",
        abstract: "Train a tiny MoE policy with GRPO on digit reversal, with optional routing replay (R2/R3).",
        discussion: """
            none: the training router decides. r2: the update replays the routing the training engine recorded in \
            its old-policy pass. r3: every training forward replays the routing the rollout engine recorded, read \
            back from the rollout trace. Writes DIR/metrics.jsonl, DIR/traces/step-NNNN.{rollout,train}.rtrace and \
            DIR/checkpoint.safetensors.

            With --rollout-trace FILE --checkpoint CKPT it runs one step on a rollout batch recorded elsewhere: the \
            sequences, prompt lengths, logprobs, rewards, groups and routing come from FILE, the weights and geometry \
            from CKPT (a checkpoint.safetensors this command wrote); a trace whose num_layers, num_experts, top_k or \
            vocab differ from the checkpoint's, or whose temperature attribute differs from --temperature, is refused. \
            Model-shape flags are then ignored.
            """
    )

    @Option(help: "Routing replay: none, r2 or r3.") var mode: String = "r3"
    @Option(help: "RL steps.") var steps: Int = 10
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(help: "Output directory.") var out: String
    @Option(help: "Decoder layers (all MoE).") var layers: Int = 2
    @Option(help: "Experts per layer.") var experts: Int = 8
    @Option(name: .customLong("top-k"), help: "Experts per token.") var topK: Int = 2
    @Option(help: "Model width.") var width: Int = 32
    @Option(help: "Attention heads.") var heads: Int = 2
    @Option(help: "Expert hidden size (default: width).") var hidden: Int?
    @Option(help: "Adam learning rate.") var lr: Double = 3e-3
    @Option(name: .customLong("group-size"), help: "Samples per prompt.") var groupSize: Int = 8
    @Option(help: "Prompts per step.") var prompts: Int = 8
    @Option(help: "Mini-batch updates per rollout batch.") var minibatches: Int = 4
    @Option(help: "Sampling temperature (also applied to training logprobs).") var temperature: Double = 1.0
    @Option(help: "PPO clip range.") var clip: Double = 0.2
    @Option(help: "Truncated importance sampling cap C (ratio against the old-policy training pass, weight min(π_old/π_rollout, C)).") var tis: Double?
    @Option(name: .customLong("lb-coef"), help: "Switch load-balancing loss coefficient.") var lbCoef: Double = 0.01
    @Option(help: "Digits to reverse.") var digits: Int = 3
    @Flag(name: .customLong("no-train-trace"), help: "Do not write the per-step train traces.") var noTrainTrace = false
    @Option(name: .customLong("rollout-trace"), help: ArgumentHelp("Run one step on this recorded rollout trace (needs --checkpoint).", valueName: "file"))
    var rolloutTrace: String?
    @Option(help: ArgumentHelp("Start from this checkpoint.safetensors (geometry and weights).", valueName: "ckpt"))
    var checkpoint: String?
    @Option(name: .customLong("overhead-bench"), help: ArgumentHelp("Instead of training, time step 0 under none and r3 this many times each, back to back in this process, and print the replay overhead.", valueName: "reps"))
    var overheadBench: Int?

    func validate() throws {
        guard ReplayMode(rawValue: mode) != nil else { throw ValidationError("--mode must be none, r2 or r3") }
        guard width % heads == 0, (width / heads) % 2 == 0 else { throw ValidationError("--width / --heads must be even") }
        guard topK >= 1, topK <= experts, experts <= 255 else { throw ValidationError("need 1 ≤ --top-k ≤ --experts ≤ 255") }
        guard steps >= 0, groupSize >= 1, prompts >= 1, minibatches >= 1, layers >= 1, digits >= 1 else {
            throw ValidationError("counts must be positive")
        }
        guard temperature > 0 else { throw ValidationError("--temperature must be > 0") }
        if rolloutTrace != nil && checkpoint == nil { throw ValidationError("--rollout-trace needs --checkpoint (the weights the step updates)") }
    }

    func run() throws {
        var c = TrainConfig()
        c.model = ModelConfig(vocab: Task.vocab, width: width, heads: heads, layers: layers, experts: experts, topK: topK, hidden: hidden)
        c.mode = ReplayMode(rawValue: mode)!
        c.steps = steps; c.seed = seed; c.out = out; c.lr = lr; c.groupSize = groupSize; c.prompts = prompts
        c.minibatches = minibatches; c.temperature = temperature; c.clip = clip; c.tis = tis; c.lbCoef = lbCoef
        c.digits = digits; c.writeTrainTrace = !noTrainTrace
        let tty = isatty(2) != 0
        try runReportingErrors {
            if let reps = overheadBench {
                let r = try measureReplayOverhead(c, reps: max(1, reps)) { i in if tty { note("pair \(i)/\(reps)") } }
                print(r.markdown, terminator: "")
                return
            }
            guard let ck = checkpoint else { return try train(Trainer(c), tty: tty) }
            let trainer = Trainer(c, model: try loadCheckpoint(path: ck))
            guard let tr = rolloutTrace else {
                guard trainer.model.cfg.vocab == Task.vocab else {
                    throw TraceError(.geometryMismatch, "vocab is \(trainer.model.cfg.vocab), the digit-reversal task needs \(Task.vocab)", file: ck)
                }
                return try train(trainer, tty: tty)
            }
            let m = try trainer.run(rolloutTrace: tr)
            if tty { note("one step on \(tr) (trace step \(m.step)): " + Self.line(m)) }
        }
    }

    static func line(_ m: StepMetrics) -> String {
        String(format: "reward %.3f k3 %.2e flip %.3f/%.3f %.2fs", m.reward, m.k3,
               m.flipRateNatural, m.flipRateApplied, m.timeRollout + m.timeTrain + m.timeReplay)
    }

    /// Runs every step; on a terminal, a progress bar on stderr that is redrawn in place.
    func train(_ trainer: Trainer, tty: Bool) throws {
        let n = trainer.cfg.steps
        var done = 0
        try trainer.run { m in
            done += 1
            guard tty else { return }
            let w = 24, f = n > 0 ? done * w / n : w
            let bar = String(repeating: "#", count: f) + String(repeating: ".", count: w - f)
            let s = "\r\u{1B}[K[\(bar)] step \(done)/\(n) " + Self.line(m) + (done == n ? "\n" : "")
            FileHandle.standardError.write(Data(s.utf8))
        }
    }
}
