"""gatewise"""
