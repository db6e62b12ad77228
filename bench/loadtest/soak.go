package main

func runSoak(s *servers) error { return nil }
