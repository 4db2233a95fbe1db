"""What is made from the results: Structured Reports, heatmap renderings and Secondary Captures, routing, labels."""
