import ArgumentParser

/// Subcommands registered by the analysis and training parts (diff, stats, replay-train).
/// Each lives in its own file; add its type here.
let extraSubcommands: [any ParsableCommand.Type] = [Diff.self, Stats.self, Merge.self, Split.self, ReplayTrain.self, Report.self]
