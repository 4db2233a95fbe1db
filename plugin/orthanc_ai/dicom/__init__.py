"""Reading and writing the instance: decoding the analysed frame, the private block and its splice."""
