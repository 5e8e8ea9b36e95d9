"""runtime/overflow"""
