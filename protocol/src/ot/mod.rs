//! Oblivious transfer: base OT and OT extension for the evaluator's input labels.
