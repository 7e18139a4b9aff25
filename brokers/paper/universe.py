"""The symbols the paper market trades: well-known US stocks and ETFs, each with a reference
price (roughly its late-2025 level) the simulated price wanders around, and a daily
volatility that sets how far it wanders."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from brokers.base import BrokerError, BrokerErrorCode


@dataclass(frozen=True)
class Instrument:
    symbol: str
    name: str
    reference_price: Decimal
    daily_volatility: Decimal  # standard deviation of a day's log return
    is_etf: bool


# (symbol, name, reference price, daily volatility)
_STOCKS: tuple[tuple[str, str, str, str], ...] = (
    ("AAPL", "Apple Inc.", "268.00", "0.015"),
    ("MSFT", "Microsoft Corporation", "478.00", "0.014"),
    ("NVDA", "NVIDIA Corporation", "182.00", "0.028"),
    ("AMZN", "Amazon.com, Inc.", "222.00", "0.019"),
    ("GOOGL", "Alphabet Inc. Class A", "290.00", "0.018"),
    ("GOOG", "Alphabet Inc. Class C", "291.00", "0.018"),
    ("META", "Meta Platforms, Inc.", "595.00", "0.022"),
    ("TSLA", "Tesla, Inc.", "400.00", "0.035"),
    ("BRK.B", "Berkshire Hathaway Inc. Class B", "505.00", "0.009"),
    ("AVGO", "Broadcom Inc.", "345.00", "0.028"),
    ("LLY", "Eli Lilly and Company", "1010.00", "0.020"),
    ("JPM", "JPMorgan Chase & Co.", "305.00", "0.013"),
    ("V", "Visa Inc.", "330.00", "0.011"),
    ("MA", "Mastercard Incorporated", "550.00", "0.012"),
    ("UNH", "UnitedHealth Group Incorporated", "325.00", "0.022"),
    ("XOM", "Exxon Mobil Corporation", "117.00", "0.013"),
    ("CVX", "Chevron Corporation", "152.00", "0.014"),
    ("JNJ", "Johnson & Johnson", "200.00", "0.010"),
    ("PG", "The Procter & Gamble Company", "148.00", "0.009"),
    ("HD", "The Home Depot, Inc.", "350.00", "0.013"),
    ("COST", "Costco Wholesale Corporation", "910.00", "0.012"),
    ("WMT", "Walmart Inc.", "102.00", "0.012"),
    ("ABBV", "AbbVie Inc.", "225.00", "0.014"),
    ("MRK", "Merck & Co., Inc.", "95.00", "0.014"),
    ("KO", "The Coca-Cola Company", "71.00", "0.008"),
    ("PEP", "PepsiCo, Inc.", "148.00", "0.010"),
    ("ADBE", "Adobe Inc.", "330.00", "0.020"),
    ("CRM", "Salesforce, Inc.", "235.00", "0.020"),
    ("NFLX", "Netflix, Inc.", "110.00", "0.021"),
    ("AMD", "Advanced Micro Devices, Inc.", "240.00", "0.032"),
    ("ORCL", "Oracle Corporation", "220.00", "0.028"),
    ("CSCO", "Cisco Systems, Inc.", "77.00", "0.012"),
    ("INTC", "Intel Corporation", "35.00", "0.030"),
    ("QCOM", "QUALCOMM Incorporated", "170.00", "0.020"),
    ("TXN", "Texas Instruments Incorporated", "160.00", "0.018"),
    ("IBM", "International Business Machines Corporation", "300.00", "0.015"),
    ("MU", "Micron Technology, Inc.", "220.00", "0.033"),
    ("AMAT", "Applied Materials, Inc.", "230.00", "0.025"),
    ("LRCX", "Lam Research Corporation", "150.00", "0.028"),
    ("KLAC", "KLA Corporation", "1150.00", "0.024"),
    ("ASML", "ASML Holding N.V.", "1000.00", "0.022"),
    ("TSM", "Taiwan Semiconductor Manufacturing Company Limited", "290.00", "0.022"),
    ("ARM", "Arm Holdings plc", "140.00", "0.035"),
    ("PLTR", "Palantir Technologies Inc.", "170.00", "0.038"),
    ("SNOW", "Snowflake Inc.", "250.00", "0.030"),
    ("CRWD", "CrowdStrike Holdings, Inc.", "520.00", "0.026"),
    ("PANW", "Palo Alto Networks, Inc.", "195.00", "0.020"),
    ("NOW", "ServiceNow, Inc.", "850.00", "0.020"),
    ("INTU", "Intuit Inc.", "650.00", "0.018"),
    ("SHOP", "Shopify Inc.", "155.00", "0.032"),
    ("UBER", "Uber Technologies, Inc.", "90.00", "0.024"),
    ("ABNB", "Airbnb, Inc.", "120.00", "0.022"),
    ("PYPL", "PayPal Holdings, Inc.", "62.00", "0.022"),
    ("COIN", "Coinbase Global, Inc.", "270.00", "0.045"),
    ("HOOD", "Robinhood Markets, Inc.", "125.00", "0.045"),
    ("DIS", "The Walt Disney Company", "110.00", "0.015"),
    ("CMCSA", "Comcast Corporation", "27.00", "0.015"),
    ("T", "AT&T Inc.", "25.00", "0.011"),
    ("VZ", "Verizon Communications Inc.", "41.00", "0.010"),
    ("TMUS", "T-Mobile US, Inc.", "210.00", "0.013"),
    ("MCD", "McDonald's Corporation", "300.00", "0.010"),
    ("SBUX", "Starbucks Corporation", "85.00", "0.018"),
    ("NKE", "NIKE, Inc.", "63.00", "0.022"),
    ("BA", "The Boeing Company", "195.00", "0.020"),
    ("CAT", "Caterpillar Inc.", "520.00", "0.019"),
    ("GE", "GE Aerospace", "295.00", "0.018"),
    ("HON", "Honeywell International Inc.", "195.00", "0.012"),
    ("DE", "Deere & Company", "470.00", "0.015"),
    ("LMT", "Lockheed Martin Corporation", "470.00", "0.012"),
    ("RTX", "RTX Corporation", "175.00", "0.013"),
    ("UNP", "Union Pacific Corporation", "230.00", "0.012"),
    ("UPS", "United Parcel Service, Inc.", "95.00", "0.017"),
    ("GS", "The Goldman Sachs Group, Inc.", "780.00", "0.018"),
    ("MS", "Morgan Stanley", "160.00", "0.017"),
    ("BAC", "Bank of America Corporation", "52.00", "0.015"),
    ("WFC", "Wells Fargo & Company", "84.00", "0.016"),
    ("C", "Citigroup Inc.", "100.00", "0.018"),
    ("AXP", "American Express Company", "360.00", "0.016"),
    ("BLK", "BlackRock, Inc.", "1050.00", "0.015"),
    ("SCHW", "The Charles Schwab Corporation", "93.00", "0.016"),
    ("SPGI", "S&P Global Inc.", "490.00", "0.012"),
    ("PFE", "Pfizer Inc.", "25.00", "0.014"),
    ("BMY", "Bristol-Myers Squibb Company", "48.00", "0.016"),
    ("AMGN", "Amgen Inc.", "340.00", "0.014"),
    ("GILD", "Gilead Sciences, Inc.", "125.00", "0.014"),
    ("TMO", "Thermo Fisher Scientific Inc.", "580.00", "0.015"),
    ("ABT", "Abbott Laboratories", "130.00", "0.011"),
    ("ISRG", "Intuitive Surgical, Inc.", "560.00", "0.018"),
    ("CVS", "CVS Health Corporation", "78.00", "0.018"),
    ("F", "Ford Motor Company", "13.00", "0.020"),
    ("GM", "General Motors Company", "72.00", "0.019"),
    ("RIVN", "Rivian Automotive, Inc.", "15.00", "0.040"),
    ("NEE", "NextEra Energy, Inc.", "85.00", "0.014"),
    ("DUK", "Duke Energy Corporation", "125.00", "0.009"),
    ("SO", "The Southern Company", "90.00", "0.009"),
    ("LIN", "Linde plc", "420.00", "0.011"),
    ("LOW", "Lowe's Companies, Inc.", "240.00", "0.014"),
    ("TGT", "Target Corporation", "90.00", "0.020"),
    ("BKNG", "Booking Holdings Inc.", "5000.00", "0.017"),
    ("DELL", "Dell Technologies Inc.", "125.00", "0.028"),
    ("SMCI", "Super Micro Computer, Inc.", "35.00", "0.045"),
)

_ETFS: tuple[tuple[str, str, str, str], ...] = (
    ("SPY", "SPDR S&P 500 ETF Trust", "665.00", "0.009"),
    ("IVV", "iShares Core S&P 500 ETF", "668.00", "0.009"),
    ("VOO", "Vanguard S&P 500 ETF", "611.00", "0.009"),
    ("VTI", "Vanguard Total Stock Market ETF", "328.00", "0.009"),
    ("QQQ", "Invesco QQQ Trust", "600.00", "0.012"),
    ("DIA", "SPDR Dow Jones Industrial Average ETF Trust", "465.00", "0.008"),
    ("IWM", "iShares Russell 2000 ETF", "240.00", "0.013"),
    ("VEA", "Vanguard FTSE Developed Markets ETF", "60.00", "0.008"),
    ("VWO", "Vanguard FTSE Emerging Markets ETF", "53.00", "0.010"),
    ("EFA", "iShares MSCI EAFE ETF", "93.00", "0.008"),
    ("EEM", "iShares MSCI Emerging Markets ETF", "53.00", "0.010"),
    ("AGG", "iShares Core U.S. Aggregate Bond ETF", "100.00", "0.003"),
    ("BND", "Vanguard Total Bond Market ETF", "74.00", "0.003"),
    ("TLT", "iShares 20+ Year Treasury Bond ETF", "89.00", "0.008"),
    ("IEF", "iShares 7-10 Year Treasury Bond ETF", "96.00", "0.004"),
    ("SHY", "iShares 1-3 Year Treasury Bond ETF", "83.00", "0.001"),
    ("LQD", "iShares iBoxx $ Investment Grade Corporate Bond ETF", "110.00", "0.004"),
    ("HYG", "iShares iBoxx $ High Yield Corporate Bond ETF", "80.00", "0.003"),
    ("GLD", "SPDR Gold Shares", "375.00", "0.012"),
    ("SLV", "iShares Silver Trust", "46.00", "0.020"),
    ("USO", "United States Oil Fund", "70.00", "0.018"),
    ("XLK", "Technology Select Sector SPDR Fund", "285.00", "0.013"),
    ("XLF", "Financial Select Sector SPDR Fund", "52.00", "0.010"),
    ("XLE", "Energy Select Sector SPDR Fund", "88.00", "0.012"),
    ("XLV", "Health Care Select Sector SPDR Fund", "150.00", "0.009"),
    ("XLY", "Consumer Discretionary Select Sector SPDR Fund", "235.00", "0.011"),
    ("XLP", "Consumer Staples Select Sector SPDR Fund", "78.00", "0.007"),
    ("XLI", "Industrial Select Sector SPDR Fund", "152.00", "0.009"),
    ("XLU", "Utilities Select Sector SPDR Fund", "87.00", "0.009"),
    ("SMH", "VanEck Semiconductor ETF", "340.00", "0.020"),
    ("ARKK", "ARK Innovation ETF", "75.00", "0.025"),
    ("VNQ", "Vanguard Real Estate ETF", "88.00", "0.010"),
    ("SCHD", "Schwab U.S. Dividend Equity ETF", "27.00", "0.007"),
    ("VUG", "Vanguard Growth ETF", "470.00", "0.012"),
    ("VTV", "Vanguard Value ETF", "185.00", "0.008"),
    ("TQQQ", "ProShares UltraPro QQQ", "100.00", "0.036"),
    ("SQQQ", "ProShares UltraPro Short QQQ", "15.00", "0.036"),
)


def _build(rows: tuple[tuple[str, str, str, str], ...], *, is_etf: bool) -> dict[str, Instrument]:
    return {
        symbol: Instrument(symbol, name, Decimal(price), Decimal(volatility), is_etf)
        for symbol, name, price, volatility in rows
    }


UNIVERSE: dict[str, Instrument] = {**_build(_STOCKS, is_etf=False), **_build(_ETFS, is_etf=True)}


def instrument(symbol: str) -> Instrument:
    """INVALID_SYMBOL, naming the symbol, for anything the paper market does not trade."""
    found = UNIVERSE.get(symbol)
    if found is None:
        raise BrokerError(
            BrokerErrorCode.INVALID_SYMBOL,
            f"unknown symbol {symbol}: the paper market trades no such stock or ETF",
        )
    return found
