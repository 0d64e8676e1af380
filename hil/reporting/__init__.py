"""What a run says afterwards: redacted attachments and outcomes, gates and their verdicts,
the clause matrix, charts and the HTML report."""
