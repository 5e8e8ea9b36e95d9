"""core: pure values and rules (models, errors, config, codec, priority, records, rules); no I/O."""
