"""Reports -> emails: settings (SPEC §6), message (an email's bytes), outbox (.eml files), smtp (sending).

Takes plain values and returns plain results; the caller (processor.run, processor.nightly) keeps
each email's status in the ledger: this package never imports it."""
