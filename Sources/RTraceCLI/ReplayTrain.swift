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

    func validate() throws {
        guard ReplayMode(rawValue: mode) != nil else { throw ValidationError("--mode must be none, r2 or r3") }
        guard width % heads == 0, (width / heads) % 2 == 0 else { throw ValidationError("--width / --heads must be even") }
        guard topK >= 1, topK <= experts, experts <= 255 else { throw ValidationError("need 1 ≤ --top-k ≤ --experts ≤ 255") }
        guard steps >= 0, groupSize >= 1, prompts >= 1, minibatches >= 1, layers >= 1, digits >= 1 else {
            throw ValidationError("counts must be positive")
        }
        guard temperature > 0 else { throw ValidationError("--temperature must be > 0") }
    }

    func run() throws {
        var c = TrainConfig()
        c.model = ModelConfig(vocab: Task.vocab, width: width, heads: heads, layers: layers, experts: experts, topK: topK, hidden: hidden)
        c.mode = ReplayMode(rawValue: mode)!
        c.steps = steps; c.seed = seed; c.out = out; c.lr = lr; c.groupSize = groupSize; c.prompts = prompts
        c.minibatches = minibatches; c.temperature = temperature; c.clip = clip; c.tis = tis; c.lbCoef = lbCoef
        c.digits = digits; c.writeTrainTrace = !noTrainTrace
        let tty = isatty(2) != 0
        let trainer = Trainer(c)
        try trainer.run { m in
            if tty {
                let line = String(format: "step %d/%d reward %.3f k3 %.2e flip %.3f/%.3f %.2fs\n", m.step + 1, c.steps, m.reward, m.k3,
                                  m.flipRateNatural, m.flipRateApplied, m.timeRollout + m.timeTrain + m.timeReplay)
                FileHandle.standardError.write(Data(line.utf8))
            }
        }
    }
}
