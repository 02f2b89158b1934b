"""Report text: the label policy, report sections, text views, the rule-based labeler and its cache."""
