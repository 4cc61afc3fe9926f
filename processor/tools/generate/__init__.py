"""The synthetic export generator (SPEC §7 ``generate``): ``export.generate_export`` writes a night;
the vocabulary and scenario rates, the users, and each chunk of projects with its milestones,
invoices and contact attempts live in modules of their own."""
