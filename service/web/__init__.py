"""The triage nurse page at / (templates/ and static/ are its files) and its interview lists."""
