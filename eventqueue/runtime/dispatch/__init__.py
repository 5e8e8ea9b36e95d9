"""runtime/dispatch"""
